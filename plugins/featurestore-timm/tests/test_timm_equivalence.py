"""Stored features equal a plain timm forward on the same pixels.

The reference is what a timm user would compute: ``timm.create_model(name)`` with the saved
state dict loaded by ``load_state_dict``, timm's own eval transform
(``create_transform(**resolve_data_config({}, model=model))``) on
``PIL.Image.open(p).convert("RGB")``, then ``forward_features`` and
``forward_head(..., pre_logits=True)``. Rows are read back from the LanceDB table, so the
whole path (decode → preprocess → forward → Arrow → LanceDB) is covered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from featurestore.testing import write_images
from featurestore_timm.testing import reference_model, reference_pixels

# name -> (dim, patch width, grid, stride, prefix tokens, forward_features layout)
MODELS = {
    "test_resnet": (96, 96, 5, 32, 0, "NCHW"),
    "test_efficientnet": (256, 256, 5, 32, 0, "NCHW"),
    # MobileNetV3: pre-logits pass through conv_head (288 -> 1024), the feature map does not
    "mobilenetv3_small_050": (1024, 288, 7, 32, 0, "NCHW"),
    "test_mambaout": (256, 64, 5, 32, 0, "NHWC"),  # forward_features is channels-last
    "test_vit": (64, 64, 10, 16, 1, "NLC"),
}
ARCH = {
    "test_resnet": "ResNet",
    "test_efficientnet": "EfficientNet",
    "mobilenetv3_small_050": "MobileNetV3",
    "test_mambaout": "MambaOut",
    "test_vit": "VisionTransformer",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEGs 64x48, 72x48, 80x48 (landscape) and PNGs 40x60, 48x60 (portrait): resize and crop both matter."""
    d = tmp_path_factory.mktemp("timm_eq_images")
    write_images(d, 3, size=(64, 48), fmt="JPEG", seed=10)
    write_images(d / "png", 2, size=(40, 60), fmt="PNG", seed=20)
    return d


def files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix in (".jpg", ".png"))


def read_rows(fs_store_path: Path, table: str) -> dict[str, dict]:
    """Rows of a feature table keyed by resolved file path, with numpy arrays."""
    out = {}
    for r in FeatureStore(fs_store_path).table(table).to_arrow().to_pylist():
        r["cls"] = np.asarray(r["cls"], np.float32)
        if r.get("patches") is not None:
            r["patches"] = np.asarray(r["patches"], np.float16)
        out[str(Path(r["uri"]).resolve())] = r
    return out


def assert_patches_match(stored: np.ndarray, ref: torch.Tensor) -> None:
    """Stored float16 patches vs the fp32 reference rounded to float16 (at most one fp16 ulp apart)."""
    ref16 = ref.to(torch.float16).numpy()
    assert stored.dtype == np.float16 and stored.shape == ref16.shape
    np.testing.assert_allclose(stored.astype(np.float32), ref16.astype(np.float32), rtol=2**-10, atol=1e-3)
    assert (stored == ref16).mean() > 0.95


def reference_tokens(feats: torch.Tensor, fmt: str, prefix: int) -> torch.Tensor:
    """(N, C) patch tokens of one image from forward_features, computed independently of the plugin."""
    f = feats[0]
    if fmt == "NCHW":
        c, h, w = f.shape
        return f.permute(1, 2, 0).reshape(h * w, c)  # row-major: row y, then column x
    if fmt == "NHWC":
        h, w, c = f.shape
        return f.reshape(h * w, c)
    return f[prefix:]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stored_features_equal_timm_forward(name, fs_tiny_timm_factory, images, fs_store_path):
    dim, pdim, grid, stride, prefix, fmt = MODELS[name]
    weights = fs_tiny_timm_factory(name, seed=1)
    fs = FeatureStore(fs_store_path)
    summary = fs.extract([images], backbone=f"timm:{name}", weights=str(weights), dense=True, workers=0, batch_size=4)
    paths = files(images)
    assert (summary.inputs, summary.written, summary.errors, summary.ok) == (len(paths), len(paths), 0, True)

    card = fs.card(summary.table)
    assert card.dim == dim and card.dense and card.patch_dtype == "float16"
    assert card.patch_dim == (pdim if pdim != dim else None)
    assert card.architecture == f"{name} ({ARCH[name]})"
    assert card.plugin == "featurestore-timm" and card.library_versions["timm"]
    assert card.weights_source == str(weights.resolve()) and card.weights_arg == str(weights)
    lay = card.token_layout
    assert (lay.grid_h, lay.grid_w, lay.patch_size, lay.num_prefix_tokens) == (grid, grid, stride, prefix)
    assert card.output_spec["cls"] == "forward_head(forward_features(x), pre_logits=True)"
    assert card.output_spec["model"]["architecture"] == name

    model = reference_model(name, weights)
    assert card.preprocessing["data_config"]["input_size"] == [3, lay.input_h, lay.input_w]
    rows = read_rows(fs_store_path, summary.table)
    assert set(rows) == {str(p.resolve()) for p in paths}
    for p in paths:
        r = rows[str(p.resolve())]
        with torch.no_grad():
            px = reference_pixels(model, p)
            feats = model.forward_features(px)
            pooled = model.forward_head(feats, pre_logits=True)[0]
        assert tuple(px.shape[-2:]) == (lay.input_h, lay.input_w)
        np.testing.assert_allclose(r["cls"], pooled.numpy(), rtol=0, atol=1e-4)
        tokens = reference_tokens(feats, fmt, prefix)
        assert tokens.shape == (grid * grid, pdim)
        assert (r["grid_h"], r["grid_w"]) == (grid, grid)
        assert_patches_match(r["patches"], tokens)


def test_patch_order_is_row_major_not_column_major(fs_tiny_timm_factory, images, fs_store_path):
    """A plugin that flattened (W, H) instead of (H, W) would store the transposed grid: caught here."""
    weights = fs_tiny_timm_factory("test_resnet", seed=1)
    s = FeatureStore(fs_store_path).extract([images], backbone="timm:test_resnet", weights=str(weights), dense=True, workers=0)
    p = files(images)[0]
    stored = read_rows(fs_store_path, s.table)[str(p.resolve())]["patches"].astype(np.float32)
    model = reference_model("test_resnet", weights)
    with torch.no_grad():
        f = model.forward_features(reference_pixels(model, p))[0]  # (C, 5, 5)
    transposed = f.permute(2, 1, 0).reshape(25, -1).half().float().numpy()
    assert not np.allclose(stored, transposed, atol=1e-2)
    np.testing.assert_allclose(stored[1], f[:, 0, 1].half().float().numpy(), rtol=2**-10, atol=1e-3)  # row 0, column 1


def test_vit_cls_is_the_normed_cls_token_and_not_a_patch(fs_tiny_timm_vit, images, fs_store_path):
    """test_vit pools with global_pool='token': cls = forward_features[:, 0], which is not among the patches."""
    s = FeatureStore(fs_store_path).extract([images], backbone="timm:test_vit", weights=str(fs_tiny_timm_vit), dense=True, workers=0)
    model = reference_model("test_vit", fs_tiny_timm_vit)
    for p, r in read_rows(fs_store_path, s.table).items():
        with torch.no_grad():
            tokens = model.forward_features(reference_pixels(model, Path(p)))[0]  # (101, 64)
        np.testing.assert_allclose(r["cls"], tokens[0].numpy(), atol=1e-4)
        assert r["patches"].shape == (100, 64)
        assert not np.any(np.all(np.abs(r["patches"].astype(np.float32) - tokens[0].numpy()) < 1e-2, axis=1))
