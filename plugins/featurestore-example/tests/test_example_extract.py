"""`featurestore extract` end to end with the example plugin: CLI → workers → forward → LanceDB.

The reference is PatchNet loaded straight from the safetensors file and run on the
preprocessed pixels of ``PIL.Image.open(p).convert("RGB")``: the stored rows must be
that forward's CLS (float32) and patch tokens (float16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore_example.backbone import PatchNetPreprocessor
from featurestore_example.model import PatchNet


def extract(capsys, *args: str) -> tuple[int, dict, str]:
    rc = main(["extract", *args, "--backbone", "example_patchnet", "--device", "cpu", "--json"])
    out = capsys.readouterr()
    return rc, json.loads(out.out), out.err


@pytest.mark.slow  # a forkserver worker
def test_extract_stores_the_modules_own_features(fs_image_dir, fs_store_path, example_weights, capsys):
    rc, summary, err = extract(
        capsys, str(fs_image_dir), "--weights", str(example_weights), "--store", str(fs_store_path),
        "--dense", "--workers", "1", "--batch-size", "3",  # one real worker process: the preprocessor is pickled
    )
    assert rc == 0, err
    assert (summary["inputs"], summary["written"], summary["errors"]) == (8, 8, 0)
    rows = FeatureStore(fs_store_path).table(summary["model_hash"]).to_arrow().to_pylist()
    assert len(rows) == 8

    ref = PatchNet()
    ref.load_state_dict(load_file(example_weights))
    ref.eval()
    pre = PatchNetPreprocessor()
    for row in rows:
        img = Image.open(row["uri"]).convert("RGB")
        p = pre(img)
        with torch.inference_mode():
            tokens = ref(p.pixel_values[None])[0].numpy()  # (65, 64)
        np.testing.assert_allclose(np.asarray(row["cls"], np.float32), tokens[0], atol=1e-5, rtol=0)
        patches = np.asarray(row["patches"], np.float32)  # (64, 64), read back from float16
        assert patches.shape == (64, 64) and (row["grid_h"], row["grid_w"]) == (8, 8)
        np.testing.assert_allclose(patches, tokens[1:], rtol=1e-3, atol=1e-3)  # float16 rounding: < 2^-11 relative
        assert (row["width"], row["height"]) == img.size
        assert tuple(row["crop_box"]) == p.crop_box

    assert main(["models", "--store", str(fs_store_path), "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)
    assert (model["model_hash"], model["rows"], model["dim"], model["dense"]) == (summary["model_hash"], 8, 64, True)
    assert model["token_layout"]["grid_h"] == 8 and model["plugin"].startswith("featurestore-example ")


def test_missing_weights_exit_2_with_the_fix(fs_image_dir, fs_store_path, tmp_path, capsys):
    rc, out, err = extract(capsys, str(fs_image_dir), "--store", str(fs_store_path))
    assert rc == 2
    assert out["error"] == "WeightsNotFoundError"
    assert "--weights FILE" in err and "python -m featurestore_example.make_weights" in err
    assert "Traceback" not in err
    missing = tmp_path / "typo.safetensors"
    rc, out, err = extract(capsys, str(fs_image_dir), "--store", str(fs_store_path), "--weights", str(missing))
    assert rc == 2 and str(missing) in err and "no such file" in err
    assert not fs_store_path.exists()  # no store created (and nothing registered) for a backbone that never loaded


def test_one_weight_element_is_another_model_and_table(fs_image_dir, fs_store_path, example_weights, tmp_path, capsys):
    common = ["--store", str(fs_store_path), "--workers", "0"]
    rc, first, err = extract(capsys, str(fs_image_dir), "--weights", str(example_weights), *common)
    assert rc == 0, err

    tensors = load_file(example_weights)
    tensors["patch_embed.bias"][0] += 1e-4
    changed = tmp_path / "changed.safetensors"
    save_file(tensors, changed)
    rc, second, err = extract(capsys, str(fs_image_dir), "--weights", str(changed), *common)
    assert rc == 0, err
    assert second["model_hash"] != first["model_hash"] and second["table"] != first["table"]
    assert second["written"] == 8  # recomputed: the old rows belong to the other model

    # the same tensors from another file: same model, so every image is already stored
    copy = Path(tmp_path / "copy" / "weights.safetensors")
    copy.parent.mkdir()
    copy.write_bytes(Path(example_weights).read_bytes())
    rc, third, err = extract(capsys, str(fs_image_dir), "--weights", str(copy), *common)
    assert rc == 0, err
    assert third["model_hash"] == first["model_hash"]
    assert (third["written"], third["skipped_existing"]) == (0, 8)
    assert len(FeatureStore(fs_store_path).models()) == 2
