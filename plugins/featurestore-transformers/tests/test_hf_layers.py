"""``--layers`` on transformers backbones: stored block outputs equal ``hidden_states``.

Reference: ``model(pixel_values, output_hidden_states=True).hidden_states[b + 1]`` with the
model's final ``layernorm`` applied (DINOv2's linear-probe convention; CLIP's vision tower
has none on its token sequence), token 0 for ``cls`` and the tokens after the prefix
(CLS + registers) for patches, concatenated over blocks on the channel axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.testing import write_images

DIM = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf_layer_images")
    write_images(d, 3, size=(64, 48), fmt="PNG", seed=3)
    return d


def _reference(model_dir: Path, kind: str, path: Path, blocks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoImageProcessor, AutoModel, CLIPVisionModel

    model = (CLIPVisionModel if kind == "clip" else AutoModel).from_pretrained(model_dir).eval()
    proc = AutoImageProcessor.from_pretrained(model_dir)
    px = proc(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
    prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    with torch.no_grad():
        states = model(pixel_values=px, output_hidden_states=True).hidden_states
        hs = [states[b + 1] for b in blocks]
        if kind != "clip":
            hs = [model.layernorm(h) for h in hs]
    cls = torch.cat([h[0, 0] for h in hs]).numpy()
    patches = torch.cat([h[0, prefix:] for h in hs], dim=-1).numpy()
    return cls, patches


def _rows(fs: FeatureStore, table: str) -> dict[str, dict]:
    return {Path(r["uri"]).name: r for r in fs.table(table).to_arrow().to_pylist()}


@pytest.mark.parametrize("kind", ["dinov2_reg", "clip"])
def test_layers_store_normed_block_outputs_concatenated(kind, fs_tiny_model_factory, images, tmp_path):
    model_dir = fs_tiny_model_factory(kind, seed=4)
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([images], backbone=f"hf:{model_dir}", layers="-2,-1", dense=True, workers=0)
    assert s.ok and s.written == 3
    card = fs.card(s.table)
    assert card.layers == [0, 1] and card.layer_dims == [DIM, DIM] and card.dim == 2 * DIM
    assert card.output_spec["layer"]["blocks"] == [0, 1]
    assert card.text_dim is None
    for name, row in _rows(fs, s.table).items():
        cls, patches = _reference(model_dir, kind, images / name, [0, 1])
        np.testing.assert_allclose(np.asarray(row["cls"], np.float32), cls, atol=1e-4, rtol=0)
        stored = np.asarray(row["patches"], np.float32)
        assert stored.shape == (4, 2 * DIM)
        np.testing.assert_allclose(stored, patches.astype(np.float16).astype(np.float32), atol=2e-3, rtol=1e-3)


def test_last_block_equals_default_output_but_is_its_own_table(fs_tiny_model_factory, images, tmp_path):
    model_dir = fs_tiny_model_factory("dinov2", seed=5)
    fs = FeatureStore(tmp_path / "s")
    default = fs.extract([images], backbone=f"hf:{model_dir}", workers=0)
    last = fs.extract([images], backbone=f"hf:{model_dir}", layers=[-1], workers=0)
    assert default.model_hash != last.model_hash  # the output spec differs, so the hash does
    a, b = _rows(fs, default.table), _rows(fs, last.table)
    for name in a:
        np.testing.assert_allclose(a[name]["cls"], b[name]["cls"], atol=1e-6)


def test_negative_and_absolute_indices_are_one_model(fs_tiny_model_factory, images, tmp_path):
    model_dir = fs_tiny_model_factory("vit", seed=6)
    fs = FeatureStore(tmp_path / "s")
    first = fs.extract([images], backbone=f"hf:{model_dir}", layers="last2", workers=0)
    again = fs.extract([images], backbone=f"hf:{model_dir}", layers="0,1", workers=0)
    other = fs.extract([images], backbone=f"hf:{model_dir}", layers="1,0", workers=0)
    assert first.model_hash == again.model_hash and again.skipped_existing == 3 and again.written == 0
    assert other.model_hash != first.model_hash  # order is the concatenation order


@pytest.mark.parametrize(
    "spec, needle",
    [("2", "has 2 blocks"), ("-3", "has 2 blocks"), ("1,-1", "named twice"), ("top", "not a list of block indices"), ("last0", "N >= 1")],
)
def test_bad_layers_exit_2_with_the_fix(spec, needle, fs_tiny_model_factory, images, tmp_path, capsys):
    model_dir = fs_tiny_model_factory("dinov2", seed=7)
    rc = main(["extract", str(images), "-b", f"hf:{model_dir}", "-s", str(tmp_path / "s"), "--workers", "0", f"--layers={spec}"])
    assert rc == 2
    assert needle in capsys.readouterr().err
