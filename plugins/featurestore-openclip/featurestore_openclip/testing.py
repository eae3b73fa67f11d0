"""Tiny random open_clip models built from configs and saved to disk.

Nothing is downloaded: a model is built with ``open_clip.CLIP`` / ``CustomTextCLIP`` from a
small config with random weights, written as ``open_clip_config.json`` +
``open_clip_model.safetensors`` (the layout of open_clip hub repos) and then loaded back
through the plugin's real code (``open_clip:local-dir:<dir>``). The text tower uses
open_clip's bundled BPE tokenizer, which needs no download.

The fixtures (``fs_*``) are opt-in: ``pytest_plugins = ["featurestore_openclip.testing"]`` in a test
suite's top-level ``conftest.py``. The unprefixed names still work for one release, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from featurestore.testing import deprecated_fixture_alias

KINDS = ("clip", "siglip")


def tiny_config(kind: str = "clip") -> dict[str, Any]:
    """``open_clip_config.json`` content of a tiny model.

    ``clip``: open_clip's own VisionTransformer (class token, ``proj(ln_post(x[:, 0]))``),
    32x32 input, patch 8, width 32, 2 blocks, embed 16; causal text transformer.
    ``siglip``: a timm trunk (``test_vit3``: no class token, one register token, MAP
    attention pooling, 9 blocks of width 96) at 160x160, squash-resized like SigLIP, ``init_logit_bias``,
    non-causal text tower with ``last`` pooling.
    """
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    if kind == "clip":
        model_cfg = {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": text,
        }
        preprocess = {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    elif kind == "siglip":
        model_cfg = {
            "embed_dim": 96,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {**text, "no_causal_mask": True, "proj_bias": True, "pool_type": "last"},
        }
        preprocess = {"size": 160, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}
    else:
        raise ValueError(f"unknown tiny open_clip kind {kind!r}; choose from {KINDS}")
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def make_tiny_openclip(directory: Path, kind: str = "clip", *, seed: int = 0, fmt: str = "safetensors") -> Path:
    """Write a tiny random open_clip model of ``kind`` into ``directory``.

    ``fmt``: ``"safetensors"`` (``open_clip_model.safetensors``) or ``"bin"``
    (``open_clip_pytorch_model.bin``, a plain ``torch.save`` of the state dict).
    """
    import open_clip
    import torch

    cfg = tiny_config(kind)
    torch.manual_seed(seed)
    model_cfg = dict(cfg["model_cfg"])
    cls = open_clip.CustomTextCLIP if model_cfg.pop("custom_text", False) else open_clip.CLIP
    model = cls(**model_cfg)
    with torch.no_grad():  # a non-trivial scale/bias so zero-shot scores are not degenerate
        model.logit_scale.fill_(float(torch.log(torch.tensor(20.0))))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(directory / "open_clip_model.safetensors"))
    elif fmt == "bin":
        torch.save(state, directory / "open_clip_pytorch_model.bin")
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    return directory


@pytest.fixture(scope="session")
def fs_tiny_openclip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random CLIP (embed 16, width 32, 32x32 input, patch 8: 4x4 patches)."""
    return make_tiny_openclip(tmp_path_factory.mktemp("tiny_openclip"), "clip")


@pytest.fixture(scope="session")
def fs_tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random SigLIP-like model (timm test_vit3 trunk, MAP pool, 160x160: 10x10 patches)."""
    return make_tiny_openclip(tmp_path_factory.mktemp("tiny_siglip"), "siglip")


@pytest.fixture(scope="session")
def fs_tiny_openclip_factory(tmp_path_factory: pytest.TempPathFactory):
    """``factory(kind, **kw) -> Path`` building a tiny model in a fresh directory."""

    def factory(kind: str = "clip", **kw: Any) -> Path:
        return make_tiny_openclip(tmp_path_factory.mktemp(f"tiny_openclip_{kind}"), kind, **kw)

    return factory


# the names before the fs_ prefix, for one release
_tiny_openclip = deprecated_fixture_alias("tiny_openclip", "fs_tiny_openclip", scope="session")
_tiny_siglip = deprecated_fixture_alias("tiny_siglip", "fs_tiny_siglip", scope="session")
_tiny_openclip_factory = deprecated_fixture_alias("tiny_openclip_factory", "fs_tiny_openclip_factory", scope="session")
