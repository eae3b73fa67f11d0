"""Stored features equal open_clip's own ``encode_image(preprocess(img))``; text equals ``encode_text``.

The reference model is built by open_clip itself (``create_model_and_transforms`` on the
same ``local-dir:``), not by the plugin, and its own eval transform makes the pixels.
Rows are read back from the LanceDB table, so the whole path is covered.
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

KINDS = ("clip", "siglip")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("oc_images")
    write_images(d, 3, size=(64, 48), fmt="PNG", seed=30)
    write_images(d / "tall", 1, size=(40, 70), fmt="JPEG", seed=40)
    return d


@pytest.fixture(scope="module")
def models(fs_tiny_openclip: Path, fs_tiny_siglip: Path) -> dict[str, Path]:
    return {"clip": fs_tiny_openclip, "siglip": fs_tiny_siglip}


def reference(model_dir: Path):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{model_dir}")


def reference_patches(model, px: torch.Tensor) -> torch.Tensor:
    """Last-block tokens after the final norm, prefix dropped, computed the library's own way."""
    visual = model.visual
    if hasattr(visual, "trunk"):
        t = visual.trunk
        return t.forward_features(px)[:, t.num_prefix_tokens :]
    visual.output_tokens = True
    try:
        _, tokens = visual(px)
    finally:
        visual.output_tokens = False
    return tokens


@pytest.mark.parametrize("kind", KINDS)
def test_stored_features_equal_encode_image(kind, models, images, tmp_path):
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([images], backbone=f"open_clip:local-dir:{models[kind]}", dense=True, workers=0)
    assert s.ok and s.written == 4
    model, preprocess, _ = reference(models[kind])
    rows = fs.table(s.table).to_arrow().to_pylist()
    for row in rows:
        px = preprocess(Image.open(row["uri"]).convert("RGB")).unsqueeze(0)  # (1, C, H, W)
        with torch.no_grad():
            ref_cls = model.encode_image(px)[0].numpy()
            ref_patches = reference_patches(model, px)[0].numpy()
        np.testing.assert_allclose(np.asarray(row["cls"], np.float32), ref_cls, atol=1e-4, rtol=0)
        stored = np.asarray(row["patches"], np.float32)
        assert stored.shape == ref_patches.shape
        np.testing.assert_allclose(stored, ref_patches.astype(np.float16).astype(np.float32), atol=2e-3, rtol=1e-3)
        assert (row["grid_h"], row["grid_w"]) == ((4, 4) if kind == "clip" else (10, 10))


def test_card_says_what_cls_is(models, images, tmp_path):
    fs = FeatureStore(tmp_path / "s")
    clip = fs.card(fs.extract([images], backbone=f"open_clip:local-dir:{models['clip']}", dense=True, workers=0).table)
    sig = fs.card(fs.extract([images], backbone=f"open_clip:local-dir:{models['siglip']}", dense=True, workers=0).table)
    assert (clip.dim, clip.patch_dim, clip.text_dim) == (16, 32, 16)  # projected cls, trunk-width patches
    assert "class token" in clip.token_layout.cls_source and "proj" in clip.token_layout.cls_source
    assert (sig.dim, sig.patch_dim, sig.text_dim) == (96, None, 96)  # trunk width == embed width here
    assert "no class token" in sig.token_layout.cls_source and "MAP" in sig.token_layout.cls_source
    assert sig.token_layout.num_prefix_tokens == 1 and sig.token_layout.num_register_tokens == 1
    assert clip.preprocessing["text"]["class"] == "SimpleTokenizer" and clip.preprocessing["text"]["vocab_sha256"]
    assert clip.plugin == "featurestore-openclip" and clip.weights_source.endswith("open_clip_model.safetensors")
    assert "open_clip_torch" in clip.library_versions


@pytest.mark.parametrize("kind", KINDS)
def test_text_equals_encode_text(kind, models, tmp_path, images):
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([images], backbone=f"open_clip:local-dir:{models[kind]}", workers=0)
    _card, backbone = fs.text_backbone(s.table)
    model, _, tokenizer = reference(models[kind])
    texts = ["a photo of a dog", "a diagram", "x"]
    with torch.no_grad():
        ours = backbone.encode_text(texts).numpy()
        ref = model.encode_text(tokenizer(texts)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_crop_box_is_the_region_the_model_sees(models, tmp_path):
    """64x32 image, 32px model: no rescale (short side already 32), centre crop x 16..48."""
    from featurestore_openclip.backbone import OpenCLIPPreprocessor

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    fs = FeatureStore(tmp_path / "s")
    pre: OpenCLIPPreprocessor = fs.backbone(f"open_clip:local-dir:{models['clip']}").preprocessor()
    out = pre(img)
    assert out.crop_box == (16.0, 0.0, 48.0, 32.0)
    mean = torch.tensor(pre.cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(pre.cfg["std"]).view(3, 1, 1)
    expected = (torch.from_numpy(arr[:, 16:48]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(out.pixel_values, expected, atol=1e-5, rtol=0)
    squash = fs.backbone(f"open_clip:local-dir:{models['siglip']}").preprocessor()
    assert squash(img).crop_box == (0.0, 0.0, 64.0, 32.0)


@pytest.mark.slow  # a forkserver worker
def test_cli_extract_with_workers(models, images, tmp_path, capsys):
    """The preprocessor is pickled into a worker process; results equal the in-process run."""
    backbone = f"open_clip:local-dir:{models['clip']}"
    store = tmp_path / "s"
    assert main(["extract", str(images), "-b", backbone, "-s", str(store), "--workers", "1", "--json"]) == 0
    fs = FeatureStore(tmp_path / "ref")
    s = fs.extract([images], backbone=backbone, workers=0)
    a = {r["id"]: r["cls"] for r in FeatureStore(store).table(s.table).to_arrow().to_pylist()}
    b = {r["id"]: r["cls"] for r in fs.table(s.table).to_arrow().to_pylist()}
    assert a.keys() == b.keys() and len(a) == 4
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_registered_names_are_listed(capsys):
    import json

    assert main(["backbones", "*clip*", "--json"]) == 0
    items = {b["name"]: b for b in json.loads(capsys.readouterr().out)}
    assert {"clip_vitb32_openai", "clip_vitl14_laion2b", "biomedclip", "open_clip:"} <= items.keys()
    assert items["clip_vitb32_openai"]["dim"] == 512 and items["clip_vitb32_openai"]["plugin"] == "featurestore-openclip"
    assert main(["backbones", "siglip_*", "--json"]) == 0
    sig = {b["name"]: b for b in json.loads(capsys.readouterr().out)}
    assert sig["siglip_so400m14_384"]["dim"] == 1152 and sig["siglip_so400m14_384"]["patch_size"] == 14


def test_workers_preload_open_clip(models, tmp_path):
    """The forkserver imports open_clip's transforms once, instead of every worker doing it."""
    from featurestore.loader import pickled_modules

    pre = FeatureStore(tmp_path / "s").backbone(f"open_clip:local-dir:{models['clip']}").preprocessor()
    mods = pickled_modules(pre)
    assert "open_clip.transform" in mods and "featurestore_openclip.backbone" in mods
