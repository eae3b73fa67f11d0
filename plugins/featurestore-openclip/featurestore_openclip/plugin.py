"""Entry point module: named CLIP / SigLIP / BiomedCLIP backbones and the ``open_clip:`` family."""

from __future__ import annotations

from typing import Any

from featurestore import hookimpl

# name -> (open_clip model name, default pretrained tag (None: the hub repo's own weights),
#          embed dim, trunk width, input px, patch px, summary)
NAMED: dict[str, tuple[str, str | None, int, int, int, int, str]] = {
    "clip_vitb32_openai": ("ViT-B-32", "openai", 512, 768, 224, 32, "OpenAI CLIP ViT-B/32"),
    "clip_vitb16_openai": ("ViT-B-16", "openai", 512, 768, 224, 16, "OpenAI CLIP ViT-B/16"),
    "clip_vitl14_openai": ("ViT-L-14", "openai", 768, 1024, 224, 14, "OpenAI CLIP ViT-L/14"),
    "clip_vitb32_laion2b": ("ViT-B-32", "laion2b_s34b_b79k", 512, 768, 224, 32, "LAION-2B CLIP ViT-B/32"),
    "clip_vitb16_laion2b": ("ViT-B-16", "laion2b_s34b_b88k", 512, 768, 224, 16, "LAION-2B CLIP ViT-B/16"),
    "clip_vitl14_laion2b": ("ViT-L-14", "laion2b_s32b_b82k", 768, 1024, 224, 14, "LAION-2B CLIP ViT-L/14"),
    "siglip_vitb16_224": ("ViT-B-16-SigLIP", "webli", 768, 768, 224, 16, "SigLIP ViT-B/16 224px (WebLI)"),
    "siglip_vitb16_384": ("ViT-B-16-SigLIP-384", "webli", 768, 768, 384, 16, "SigLIP ViT-B/16 384px (WebLI)"),
    "siglip_vitl16_384": ("ViT-L-16-SigLIP-384", "webli", 1024, 1024, 384, 16, "SigLIP ViT-L/16 384px (WebLI)"),
    "siglip_so400m14_384": ("ViT-SO400M-14-SigLIP-384", "webli", 1152, 1152, 384, 14, "SigLIP SO400M/14 384px (WebLI)"),
    "biomedclip": (
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        None,
        512,
        768,
        224,
        16,
        "BiomedCLIP ViT-B/16 + PubMedBERT (biomedical image-text)",
    ),
}


# name -> the hub repositories its default weights (and, for SigLIP, its tokenizer) load from:
# open_clip's pretrained config ``hf_hub`` (tests/test_oc_registry.py keeps them equal), so an
# offline run can fail before open_clip and torch are imported.
HUB_REPOS: dict[str, tuple[str, ...]] = {
    "clip_vitb32_openai": ("timm/vit_base_patch32_clip_224.openai",),
    "clip_vitb16_openai": ("timm/vit_base_patch16_clip_224.openai",),
    "clip_vitl14_openai": ("timm/vit_large_patch14_clip_224.openai",),
    "clip_vitb32_laion2b": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K",),
    "clip_vitb16_laion2b": ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K",),
    "clip_vitl14_laion2b": ("laion/CLIP-ViT-L-14-laion2B-s32B-b82K",),
    "siglip_vitb16_224": ("timm/ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP"),
    "siglip_vitb16_384": ("timm/ViT-B-16-SigLIP-384", "timm/ViT-B-16-SigLIP"),
    "siglip_vitl16_384": ("timm/ViT-L-16-SigLIP-384", "timm/ViT-B-16-SigLIP"),
    "siglip_so400m14_384": ("timm/ViT-SO400M-14-SigLIP-384", "timm/ViT-B-16-SigLIP"),
    "biomedclip": ("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",),
}


#: what the preprocessor's workers import (featurestore.hookspecs.register_backbones)
WORKER_PRELOAD = ["featurestore_openclip.backbone", "open_clip.transform"]


def _check_hub(name: str, repos: tuple[str, ...]) -> None:
    """Offline or hub unreachable, and a repository not cached: fail now (featurestore.hub)."""
    from featurestore import hub

    for repo in dict.fromkeys(repos):
        hub.check(name, repo)


def _layout(model_name: str, dim: int, width: int, size: int, patch: int) -> str:
    g = size // patch
    pooled = "MAP-pooled embedding (no CLS token)" if "SigLIP" in model_name else "projected CLS embedding"
    return f"{pooled} ({dim}) + {g}×{g} patches of {patch} px at {size}×{size}, width {width}; text tower; --layers"


def _named_factory(name: str, weights: str | None = None, **_: Any):
    if weights is None:
        _check_hub(name, HUB_REPOS[name])
    from featurestore_openclip.loading import load_backbone

    model_name, tag = NAMED[name][:2]
    return load_backbone(name, model_name, weights if weights is not None else tag)


def _family_factory(name: str, weights: str | None = None, **_: Any):
    model_name = name.removeprefix("open_clip:")
    if model_name.startswith("hf-hub:"):
        _check_hub(name, (model_name.removeprefix("hf-hub:").split("@")[0].strip("/"),))
    from featurestore_openclip.loading import load_backbone

    return load_backbone(name, name.removeprefix("open_clip:"), weights)


@hookimpl
def register_backbones(register) -> None:
    for name, (model_name, tag, dim, width, size, patch, summary) in NAMED.items():
        source = model_name if tag is None else f"{model_name} pretrained={tag}"
        register(
            name,
            _named_factory,
            summary=summary,
            dim=dim,
            patch_size=patch,
            source=source,
            text=True,
            layout=_layout(model_name, dim, width, size, patch),
            worker_preload=WORKER_PRELOAD,
        )
    register(
        "open_clip:",
        _family_factory,
        summary="any open_clip model: open_clip:<architecture> with --weights TAG|FILE, open_clip:hf-hub:<org/repo>, "
        "open_clip:local-dir:<dir>",
        source="open_clip.create_model",
        text=True,
        layout="the model's image embedding + its ViT patch grid; text tower; --layers",
        worker_preload=WORKER_PRELOAD,
    )
