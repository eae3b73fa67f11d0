"""Entry point module (``[project.entry-points.featurestore] example = ...``).

Loaded every time the core builds its plugin host (``featurestore plugins``,
``featurestore backbones``, every extraction), so it imports nothing heavy: torch and the
model code are imported by the factory, when a backbone is actually built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore import hookimpl

if TYPE_CHECKING:
    from featurestore.hookspecs import RegisterFn
    from featurestore_example.backbone import PatchNetBackbone

NAME = "example_patchnet"


def create_patchnet(name: str, weights: str | None = None) -> "PatchNetBackbone":
    """Factory the core calls as ``factory(name, weights=...)`` (``--weights FILE``)."""
    from featurestore_example.backbone import load_backbone

    return load_backbone(name, weights)


@hookimpl
def register_backbones(register: "RegisterFn") -> None:
    """Register ``example_patchnet``; the metadata is what ``featurestore backbones`` shows."""
    register(
        NAME,
        create_patchnet,
        summary="example plugin: PatchNet, a 2-block ViT on 64x64 input (8x8 patches of 8 px)",
        dim=64,
        patch_size=8,
        source="--weights FILE.safetensors (python -m featurestore_example.make_weights FILE)",
        layout="CLS + 8×8 patches of 8 px at 64×64",
    )
