"""Tiny random transformers models built from configs and saved to disk.

Nothing is downloaded: each model is built from a small config with random weights,
saved with ``save_pretrained`` and then loaded back through the plugin's real code.

The fixtures (``fs_*``) are opt-in: ``pytest_plugins = ["featurestore_transformers.testing"]`` in a test
suite's top-level ``conftest.py``. The unprefixed names still work for one release, with a
``DeprecationWarning``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.testing import deprecated_fixture_alias

KINDS = ("dinov2", "dinov2_reg", "vit", "vit_mae", "clip")


def make_tiny_model(directory: Path, kind: str = "dinov2", *, safe_serialization: bool = True, seed: int = 0, hidden: int = 32) -> Path:
    """Save a tiny random model of ``kind`` and its image processor into ``directory``."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden, patch_size=14)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(image_size=28, **common))
        proc = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True, image_mean=mean, image_std=std)
    elif kind == "dinov2_reg":
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(image_size=28, num_register_tokens=4, **common))
        proc = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True, image_mean=mean, image_std=std)
    elif kind == "vit":
        model = tf.ViTModel(tf.ViTConfig(image_size=28, **common))
        proc = tf.ViTImageProcessor(size={"height": 28, "width": 28})
    elif kind == "vit_mae":
        model = tf.ViTMAEModel(tf.ViTMAEConfig(image_size=28, mask_ratio=0.75, **common))
        proc = tf.ViTImageProcessor(size={"height": 28, "width": 28})
    elif kind == "clip":
        cfg = tf.CLIPVisionConfig(image_size=28, **common)
        model = tf.CLIPVisionModel(cfg)
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose from {KINDS}")
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if not safe_serialization:
        # transformers 5 ignores save_pretrained(safe_serialization=False) and always writes
        # safetensors: write the very same tensors as a pickled pytorch_model.bin instead.
        from safetensors.torch import load_file

        st = directory / "model.safetensors"
        torch.save(load_file(st), directory / "pytorch_model.bin")
        st.unlink()
    proc.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def fs_tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random DINOv2 (D=32, patch 14, 28x28 input: 2x2 patches)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_dinov2"), "dinov2")


@pytest.fixture(scope="session")
def fs_tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """``factory(kind, **kw) -> Path`` building any tiny model kind in a fresh directory."""

    def factory(kind: str, **kw) -> Path:
        return make_tiny_model(tmp_path_factory.mktemp(f"tiny_{kind}"), kind, **kw)

    return factory


# the names before the fs_ prefix, for one release
_tiny_dinov2 = deprecated_fixture_alias("tiny_dinov2", "fs_tiny_dinov2", scope="session")
_tiny_model_factory = deprecated_fixture_alias("tiny_model_factory", "fs_tiny_model_factory", scope="session")
