"""Entry point module: registers the DINOv2 family and the ``hf:`` family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featurestore import hookimpl

# name -> (hub id, width, register tokens)
DINOV2: dict[str, tuple[str, int, int]] = {
    "dinov2_vits14": ("facebook/dinov2-small", 384, 0),
    "dinov2_vitb14": ("facebook/dinov2-base", 768, 0),
    "dinov2_vitl14": ("facebook/dinov2-large", 1024, 0),
    "dinov2_vitg14": ("facebook/dinov2-giant", 1536, 0),
    "dinov2_vits14_reg": ("facebook/dinov2-with-registers-small", 384, 4),
    "dinov2_vitb14_reg": ("facebook/dinov2-with-registers-base", 768, 4),
    "dinov2_vitl14_reg": ("facebook/dinov2-with-registers-large", 1024, 4),
    "dinov2_vitg14_reg": ("facebook/dinov2-with-registers-giant", 1536, 4),
}


#: what the preprocessor's workers import (featurestore.hookspecs.register_backbones): the plugin's
#: preprocessor and transformers' image processing (with torchvision, seconds to import)
WORKER_PRELOAD = ["featurestore_transformers.backbone", "transformers.image_processing_utils"]


def is_local(source: str) -> bool:
    """A path (absolute, ``./``, ``../``, ``~`` or existing), not a hub id."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def _check_hub(name: str, source: str) -> None:
    """Offline or hub unreachable, and ``source`` not cached: fail now, before importing torch
    and transformers (featurestore.hub), instead of after the libraries' retries."""
    if not is_local(source):
        from featurestore import hub

        hub.check(name, source)


def _named_factory(name: str, weights: str | None = None, **_: Any):
    hub_id, dim, _regs = DINOV2[name]
    _check_hub(name, weights or hub_id)
    from featurestore_transformers.backbone import load_backbone

    return load_backbone(name, weights or hub_id, expect_dim=dim, default_source=hub_id)


def _hf_factory(name: str, weights: str | None = None, **_: Any):
    source = weights or name.removeprefix("hf:")
    _check_hub(name, source)
    from featurestore_transformers.backbone import load_backbone

    return load_backbone(name, source)


@hookimpl
def register_backbones(register) -> None:
    for name, (hub_id, dim, regs) in DINOV2.items():
        register(
            name,
            _named_factory,
            summary=f"DINOv2 ViT-{name.split('_vit')[1][0].upper()}/14" + (" with 4 registers" if regs else ""),
            dim=dim,
            patch_size=14,
            register_tokens=regs,
            source=hub_id,
            layout=("CLS + 4 registers (dropped) + " if regs else "CLS + ") + "16×16 patches of 14 px at 224×224; --layers",
            worker_preload=WORKER_PRELOAD,
        )
    register(
        "hf:",
        _hf_factory,
        summary="any transformers vision model with a CLS token (ViT, MAE, DINOv2, CLIP vision, DeiT, BEiT): hf:<hub id or dir>",
        source="hf:<hub id or local directory>",
        layout="CLS + the model's patch grid (prefix tokens dropped); --layers",
        worker_preload=WORKER_PRELOAD,
    )
