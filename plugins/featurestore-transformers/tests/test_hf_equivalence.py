"""Stored features equal a plain transformers forward, for every supported tiny model kind.

The reference is computed the way a user of transformers would: the model's own
``AutoImageProcessor`` on ``PIL.Image.open(p).convert("RGB")``, then ``AutoModel``
(``CLIPVisionModel`` for CLIP) forward. CLS = ``last_hidden_state[:, 0]``; patches =
``last_hidden_state[:, num_prefix:]`` (1 + register tokens). Rows are read back from
the LanceDB table, so the whole path (workers → forward → Arrow → LanceDB) is covered.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore import FeatureStore
from featurestore.testing import write_images

KINDS = ("dinov2", "dinov2_reg", "vit", "vit_mae", "clip")
REGISTERS = {"dinov2_reg": 4}
ARCH = {
    "dinov2": "Dinov2Model",
    "dinov2_reg": "Dinov2WithRegistersModel",
    "vit": "ViTModel",
    "vit_mae": "ViTMAEModel",
    "clip": "CLIPVisionModel",
}
GRID = 2  # 28x28 input, patch 14
DIM = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real files of several sizes, none square, so resize and crop both matter.

    JPEG: 64x48, 72x48, 80x48 (landscape); PNG: 40x60, 48x60 (portrait).
    """
    d = tmp_path_factory.mktemp("hf_eq_images")
    write_images(d, 3, size=(64, 48), fmt="JPEG", seed=10)
    write_images(d / "png", 2, size=(40, 60), fmt="PNG", seed=20)
    return d


@pytest.fixture(scope="module")
def model_dirs(fs_tiny_model_factory) -> dict[str, Path]:
    return {kind: fs_tiny_model_factory(kind, seed=1) for kind in KINDS}


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix in (".jpg", ".png"))


def load_reference(model_dir: Path, kind: str):
    """Model + processor loaded directly with transformers, as the reference."""
    from transformers import AutoImageProcessor, AutoModel, CLIPVisionModel

    if kind == "clip":
        model = CLIPVisionModel.from_pretrained(model_dir)
    elif kind == "vit_mae":
        model = AutoModel.from_pretrained(model_dir, mask_ratio=0.0)
    else:
        model = AutoModel.from_pretrained(model_dir)
    return model.eval(), AutoImageProcessor.from_pretrained(model_dir)


def reference_hidden(model, proc, kind: str, path: Path, noise: torch.Tensor | None = None) -> torch.Tensor:
    """last_hidden_state (T, D) of one image; for MAE with identity noise unless given."""
    px = proc(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]  # (1, C, H, W)
    kwargs = {}
    if kind == "vit_mae":
        b, n = px.shape[0], (px.shape[-2] // 14) * (px.shape[-1] // 14)
        kwargs["noise"] = torch.arange(n).expand(b, n).float() if noise is None else noise
    with torch.no_grad():
        return model(pixel_values=px, **kwargs).last_hidden_state[0]


def read_rows(fs_store_path: Path, table: str) -> dict[str, dict]:
    """Rows of a feature table keyed by resolved file path, with numpy arrays."""
    fs = FeatureStore(fs_store_path)
    out = {}
    for r in fs.table(table).to_arrow().to_pylist():
        r["cls"] = np.asarray(r["cls"], np.float32)
        if r.get("patches") is not None:
            r["patches"] = np.asarray(r["patches"], np.float16)
        out[str(Path(r["uri"]).resolve())] = r
    return out


def assert_patches_match(stored: np.ndarray, ref: torch.Tensor) -> None:
    """Stored float16 patches vs the fp32 reference rounded to float16.

    Both sides are fp16 roundings of fp32 values that agree to ~1e-6, so they are equal
    except where the two fp32 values straddle a rounding boundary: then they differ by one
    fp16 ulp, which is at most 2**-10 relative to the value.
    """
    ref16 = ref.to(torch.float16).numpy()
    assert stored.dtype == np.float16 and stored.shape == ref16.shape
    np.testing.assert_allclose(stored.astype(np.float32), ref16.astype(np.float32), rtol=2**-10, atol=1e-3)
    assert (stored == ref16).mean() > 0.95  # nearly all elements are bit-identical


@pytest.mark.parametrize("kind", KINDS)
def test_stored_features_equal_transformers_forward(kind, model_dirs, images, fs_store_path):
    d = model_dirs[kind]
    fs = FeatureStore(fs_store_path)
    summary = fs.extract([images], backbone=f"hf:{d}", dense=True, workers=0, batch_size=4)
    files = _files(images)
    assert (summary.inputs, summary.written, summary.errors, summary.ok) == (len(files), len(files), 0, True)

    # model card: the token layout of a 28x28 input with patch 14
    card = fs.card(summary.table)
    regs = REGISTERS.get(kind, 0)
    layout = card.token_layout
    assert (layout.grid_h, layout.grid_w, layout.patch_size) == (GRID, GRID, 14)
    assert (layout.num_register_tokens, layout.num_prefix_tokens) == (regs, 1 + regs)
    assert (layout.input_h, layout.input_w) == (28, 28)
    assert layout.cls_source == "last_hidden_state[:, 0]"
    assert card.dim == DIM and card.dense and card.patch_dtype == "float16"
    assert card.architecture == ARCH[kind]
    assert card.weights_source == str(d.resolve())
    assert card.output_spec["patches"] == f"last_hidden_state[:, {1 + regs}:]"

    rows = read_rows(fs_store_path, summary.table)
    assert set(rows) == {str(p.resolve()) for p in files}
    model, proc = load_reference(d, kind)
    for p in files:
        r = rows[str(p.resolve())]
        data = p.read_bytes()
        assert r["id"] == hashlib.sha256(data).hexdigest()
        with Image.open(p) as im:
            assert (r["width"], r["height"]) == im.size
        assert (r["grid_h"], r["grid_w"]) == (GRID, GRID)

        hidden = reference_hidden(model, proc, kind, p)  # (1 + regs + 4, D)
        assert hidden.shape == (1 + regs + GRID * GRID, DIM)
        np.testing.assert_allclose(r["cls"], hidden[0].numpy(), rtol=0, atol=1e-4)
        assert r["patches"].shape == (GRID * GRID, DIM)
        assert_patches_match(r["patches"], hidden[1 + regs :])
        if regs:
            # the register tokens are neither CLS nor patches: none of them is stored
            reg_tokens = hidden[1 : 1 + regs].to(torch.float16).numpy().astype(np.float32)
            for tok in r["patches"].astype(np.float32):
                assert not np.any(np.all(np.abs(reg_tokens - tok) < 1e-2, axis=1))


def test_mae_patches_are_in_raster_order_not_random(model_dirs, images, fs_store_path):
    """Without the plugin's identity noise, ViTMAE shuffles the patch tokens at random.

    This shows the equivalence test above would catch a plugin that forgot the noise:
    a forward with a (fixed, non-identity) random noise gives the same CLS but the
    patches in another order, so they differ from what is stored.
    """
    d = model_dirs["vit_mae"]
    summary = FeatureStore(fs_store_path).extract([images], backbone=f"hf:{d}", dense=True, workers=0)
    rows = read_rows(fs_store_path, summary.table)
    model, proc = load_reference(d, "vit_mae")
    p = _files(images)[0]
    stored = rows[str(p.resolve())]["patches"].astype(np.float32)

    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(1, GRID * GRID, generator=gen)
    perm = torch.argsort(noise, dim=1)[0]
    assert not torch.equal(perm, torch.arange(GRID * GRID))  # a real shuffle
    shuffled = reference_hidden(model, proc, "vit_mae", p, noise=noise)
    assert shuffled.shape[0] == 1 + GRID * GRID  # mask_ratio 0: every patch kept
    shuffled_patches = shuffled[1:].to(torch.float16).numpy().astype(np.float32)
    assert not np.allclose(stored, shuffled_patches, atol=1e-2)
    # same tokens, other order: stored[perm] is what the shuffled forward returns
    np.testing.assert_allclose(stored[perm.numpy()], shuffled_patches, rtol=2**-10, atol=1e-3)
    np.testing.assert_allclose(rows[str(p.resolve())]["cls"], shuffled[0].numpy(), atol=1e-4)


@pytest.mark.slow  # forkserver workers
def test_worker_processes_give_identical_rows(model_dirs, images, tmp_path):
    """workers=2 (DataLoader worker processes via forkserver) == workers=0, bit for bit."""
    d = model_dirs["dinov2_reg"]
    s0 = FeatureStore(tmp_path / "w0.lance").extract([images], backbone=f"hf:{d}", dense=True, workers=0, batch_size=2)
    s2 = FeatureStore(tmp_path / "w2.lance").extract([images], backbone=f"hf:{d}", dense=True, workers=2, batch_size=2)
    assert s0.model_hash == s2.model_hash
    assert (s2.written, s2.errors) == (len(_files(images)), 0)
    r0, r2 = read_rows(tmp_path / "w0.lance", s0.table), read_rows(tmp_path / "w2.lance", s2.table)
    assert set(r0) == set(r2) and len(r0) == len(_files(images))
    for key in r0:
        a, b = r0[key], r2[key]
        assert (a["id"], a["width"], a["height"], a["grid_h"], a["grid_w"]) == (b["id"], b["width"], b["height"], b["grid_h"], b["grid_w"])
        np.testing.assert_array_equal(np.asarray(a["crop_box"]), np.asarray(b["crop_box"]))
        np.testing.assert_array_equal(a["cls"], b["cls"])
        np.testing.assert_array_equal(a["patches"], b["patches"])
