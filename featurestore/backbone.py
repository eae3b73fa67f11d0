"""The contract between the core and backbone plugins.

A plugin's factory returns a :class:`Backbone`. The core never looks inside the model:
it asks for a picklable preprocessor (run in DataLoader workers), the tensors to hash,
the specs to hash, and a batched forward that returns CLS and patch tokens.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from featurestore.config import TokenLayout
from featurestore.errors import UnsupportedModelError

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Preprocessed:
    """One image ready for the model."""

    pixel_values: torch.Tensor  # (C, H, W) float32
    crop_box: tuple[float, float, float, float]  # (left, top, right, bottom) in original pixels


# picklable: it runs in DataLoader worker processes
Preprocessor = Callable[["Image.Image"], Preprocessed]


@dataclass
class BackboneOutput:
    """Features for one batch."""

    cls: torch.Tensor  # (B, D)
    patches: torch.Tensor | None  # (B, N, P), N = grid_h * grid_w, P = patch_dim (usually D); None when not asked for
    layout: TokenLayout


@dataclass(frozen=True)
class ZeroShotHead:
    """How image and text embeddings of a language-aligned model become class scores.

    ``logits = logit_scale * cos(image, text) + logit_bias``; ``activation`` is
    ``"softmax"`` (CLIP: one label per image) or ``"sigmoid"`` (SigLIP: independent labels).
    """

    logit_scale: float
    logit_bias: float = 0.0
    activation: str = "softmax"


class Backbone(abc.ABC):
    """A loaded image backbone, provided by a plugin factory ``factory(name, weights=None)``.

    Optional capabilities (defaults say "not supported"):

    * intermediate layers: set :attr:`num_layers`, override :meth:`feature_dim` and
      accept ``layers=`` in :meth:`forward` / :meth:`output_spec`;
    * a text tower: set :attr:`text_dim`, override :meth:`encode_text` and
      :meth:`zero_shot_head`; its weights must be among :meth:`named_tensors` and its
      tokenizer described in :meth:`preprocess_spec`, so the model hash covers it.
    """

    #: name as registered / asked for, e.g. ``"dinov2_vits14"``
    name: str
    #: width of ``cls`` and each patch token (default output, no ``layers``)
    dim: int
    #: blocks ``layers`` can select, numbered ``0 .. num_layers - 1``; None: no intermediate layers
    num_layers: int | None = None
    #: width of :meth:`encode_text` output (== ``dim``: same embedding space); None: no text tower
    text_dim: int | None = None

    @abc.abstractmethod
    def preprocessor(self) -> Preprocessor:
        """A picklable callable turning a decoded RGB image into model input."""

    @abc.abstractmethod
    def preprocess_spec(self) -> dict[str, Any]:
        """JSON-able, deterministic description of the preprocessing (part of the model hash)."""

    @abc.abstractmethod
    def output_spec(self, dense: bool) -> dict[str, Any]:
        """JSON-able description of what is output: layer, token selection, normalisation.

        Include every architecture setting that changes the forward but lives in no tensor
        (attention heads, norm eps, activation …): two models with equal tensors and another
        head count must not share a hash.

        Backbones with :attr:`num_layers` also take ``layers: tuple[int, ...] | None``
        (block indices, already resolved to ``0 .. num_layers - 1``).
        """

    @abc.abstractmethod
    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Every weight and persistent buffer that determines the output, by name."""

    @abc.abstractmethod
    def to(self, device: torch.device) -> "Backbone":
        """Move the model to ``device``; returns self."""

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor, *, dense: bool) -> BackboneOutput:
        """Batched forward on ``pixel_values`` (B, C, H, W); called under inference mode.

        Backbones with :attr:`num_layers` also take ``layers``: then ``cls`` (B, feature_dim)
        is each chosen block's global vector concatenated in the order given, and
        ``patches`` (B, N, feature_dim) each block's patch tokens concatenated on the last axis.
        """

    @abc.abstractmethod
    def card_info(self) -> dict[str, Any]:
        """Facts for the model card: ``plugin``, ``plugin_version``, ``weights_source``,
        ``weights_revision``, ``architecture``, ``library_versions``, ``token_layout``."""

    # -- optional capabilities --------------------------------------------------
    def feature_dim(self, layers: Sequence[int] | None = None) -> int:
        """Width of the stored ``cls`` / patch tokens for a layer selection."""
        if layers is None:
            return self.dim
        raise UnsupportedModelError(f"backbone {self.name!r} cannot output intermediate layers (--layers)")

    def patch_dim(self, layers: Sequence[int] | None = None) -> int:
        """Width of each stored patch token; the same as :meth:`feature_dim` unless overridden
        (e.g. MobileNetV3, whose pooled pre-logits pass through one more layer than its feature map)."""
        return self.feature_dim(layers)

    def token_layout(self, layers: Sequence[int] | None = None) -> TokenLayout | None:
        """Patch token layout of the output for a layer selection (None: unknown)."""
        layout = self.card_info().get("token_layout")
        return TokenLayout.model_validate(layout) if layout else None

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` (T, text_dim) in the space of the default image ``cls``; under inference mode."""
        raise UnsupportedModelError(
            f"backbone {self.name!r} has no text tower. Fix: use a language-aligned backbone "
            f"(CLIP / SigLIP from featurestore-openclip)."
        )

    def zero_shot_head(self) -> ZeroShotHead:
        """Logit scale / bias / activation for zero-shot classification."""
        raise UnsupportedModelError(f"backbone {self.name!r} has no text tower, so no zero-shot head")
