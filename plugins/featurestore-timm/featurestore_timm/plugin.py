"""Entry point module: registers named timm CNNs and the ``timm:`` family.

Named backbones pin a pretrained tag (timm's default when this table was written), so a
later timm that changes its default does not silently change what a name means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featurestore import hookimpl


@dataclass(frozen=True)
class Named:
    """One named backbone: timm architecture + default pretrained tag and its facts."""

    tag: str
    dim: int  # width of cls: timm's pooled pre-logits (head_hidden_size)
    patch_dim: int  # channels of the final feature map (num_features)
    patch_size: int  # stride of the final feature map
    input_size: int  # square input of the tag's eval transform
    summary: str


NAMED: dict[str, Named] = {
    "resnet50": Named("a1_in1k", 2048, 2048, 32, 224, "ResNet-50, ImageNet-1k (ResNet strikes back A1)"),
    "convnext_tiny": Named("in12k_ft_in1k", 768, 768, 32, 224, "ConvNeXt-T, ImageNet-12k fine-tuned on 1k"),
    "convnext_small": Named("in12k_ft_in1k", 768, 768, 32, 224, "ConvNeXt-S, ImageNet-12k fine-tuned on 1k"),
    "convnext_base": Named("fb_in22k_ft_in1k", 1024, 1024, 32, 224, "ConvNeXt-B, ImageNet-22k fine-tuned on 1k"),
    "efficientnet_b0": Named("ra_in1k", 1280, 1280, 32, 224, "EfficientNet-B0, ImageNet-1k (RandAugment)"),
    "efficientnet_b3": Named("ra2_in1k", 1536, 1536, 32, 288, "EfficientNet-B3, ImageNet-1k (RandAugment v2)"),
    "mobilenetv3_large_100": Named("ra_in1k", 1280, 960, 32, 224, "MobileNetV3-Large 1.0, ImageNet-1k"),
    "mobilenetv3_small_100": Named("lamb_in1k", 1024, 576, 32, 224, "MobileNetV3-Small 1.0, ImageNet-1k"),
}


#: what the preprocessor's workers import (featurestore.hookspecs.register_backbones): timm's data module
WORKER_PRELOAD = ["featurestore_timm.preprocess"]

#: what a timm backbone also takes instead of hub weights (said in offline errors)
WEIGHTS_FILE_FIX = "or pass a checkpoint with --weights FILE (.safetensors, or .pth/.pt/.bin holding only tensors)"


def _layout(info: Named) -> str:
    g = info.input_size // info.patch_size
    return (
        f"pooled pre-logits ({info.dim}) + {g}×{g} final feature map of stride {info.patch_size} at "
        f"{info.input_size}×{info.input_size}, width {info.patch_dim}; --layers (stages)"
    )


def _named_factory(name: str, weights: str | None = None, **_: Any):
    if weights is None:  # offline or hub unreachable and not cached: fail before importing torch and timm
        from featurestore import hub

        hub.check(name, f"timm/{name}.{NAMED[name].tag}", other_fix=WEIGHTS_FILE_FIX)
    from featurestore.errors import UnsupportedModelError
    from featurestore_timm.backbone import TimmBackbone
    from featurestore_timm.loading import load_model

    info = NAMED[name]
    backbone = TimmBackbone(name, load_model(name, name, None, weights, fallback_tag=info.tag))
    if backbone.dim != info.dim:
        raise UnsupportedModelError(
            f"backbone {name!r} has width {info.dim}, but the weights at {weights!r} give a {backbone.arch!r} of width "
            f"{backbone.dim} (other model_args). Fix: use --backbone timm:{name} for variants of it."
        )
    return backbone


def _family_factory(name: str, weights: str | None = None, **_: Any):
    arch, _, tag = name.removeprefix("timm:").strip().partition(".")
    if weights is None and arch and not any(c in arch for c in "/\\:*?["):
        # Offline: fail before importing torch and timm (15 s on a busy machine). The repository
        # is inferred from the name, as timm names ~97 % of its hub weights; the others load
        # with HF_HUB_OFFLINE=1, which skips this guess for timm's exact offline look-up.
        from featurestore import hub

        repo = f"timm/{arch}.{tag or '*'}"
        hub.check(name, repo, guess=True, label=f"timm/{arch}.{tag or '<tag>'}", other_fix=WEIGHTS_FILE_FIX)
    from featurestore_timm.backbone import TimmBackbone
    from featurestore_timm.loading import load_model, parse_name

    arch, tag = parse_name(name)
    return TimmBackbone(name, load_model(name, arch, tag, weights))


@hookimpl
def register_backbones(register) -> None:
    for name, info in NAMED.items():
        meta: dict[str, Any] = {
            "summary": info.summary,
            "dim": info.dim,
            "patch_size": info.patch_size,
            "source": f"hf-hub:timm/{name}.{info.tag}",
            "input_size": info.input_size,
            "layout": _layout(info),
            "worker_preload": WORKER_PRELOAD,
        }
        if info.patch_dim != info.dim:
            meta["patch_dim"] = info.patch_dim
        register(name, _named_factory, **meta)
    register(
        "timm:",
        _family_factory,
        summary="any timm model, CNN or ViT (timm.list_models(), test_* included): timm:<name> or timm:<name>.<tag>",
        source="timm:<name>[.<tag>]; --weights FILE, DIR or tag",
        layout="pooled pre-logits + the final feature map (CNN) or patch grid (ViT, prefix tokens dropped); --layers",
        worker_preload=WORKER_PRELOAD,
    )
