"""The contract between the core and backbone plugins.

A plugin's factory returns a :class:`Backbone`. The core never looks inside the model:
it asks for a picklable preprocessor (run in DataLoader workers), the tensors to hash,
the specs to hash, and a batched forward that returns CLS and patch tokens.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from featurestore.config import TokenLayout

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
    patches: torch.Tensor | None  # (B, N, D), N = grid_h * grid_w, or None when not asked for
    layout: TokenLayout


class Backbone(abc.ABC):
    """A loaded image backbone, provided by a plugin factory ``factory(name, weights=None)``."""

    #: name as registered / asked for, e.g. ``"dinov2_vits14"``
    name: str
    #: width of ``cls`` and each patch token
    dim: int

    @abc.abstractmethod
    def preprocessor(self) -> Preprocessor:
        """A picklable callable turning a decoded RGB image into model input."""

    @abc.abstractmethod
    def preprocess_spec(self) -> dict[str, Any]:
        """JSON-able, deterministic description of the preprocessing (part of the model hash)."""

    @abc.abstractmethod
    def output_spec(self, dense: bool) -> dict[str, Any]:
        """JSON-able description of what is output: layer, token selection, normalisation."""

    @abc.abstractmethod
    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Every weight and persistent buffer that determines the output, by name."""

    @abc.abstractmethod
    def to(self, device: torch.device) -> "Backbone":
        """Move the model to ``device``; returns self."""

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor, *, dense: bool) -> BackboneOutput:
        """Batched forward on ``pixel_values`` (B, C, H, W); called under inference mode."""

    @abc.abstractmethod
    def card_info(self) -> dict[str, Any]:
        """Facts for the model card: ``plugin``, ``plugin_version``, ``weights_source``,
        ``weights_revision``, ``architecture``, ``library_versions``, ``token_layout``."""
