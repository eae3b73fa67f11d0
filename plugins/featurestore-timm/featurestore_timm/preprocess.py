"""timm's own eval transform as a picklable featurestore preprocessor, with the crop box.

The transform is ``timm.data.create_transform(**data_config, is_training=False)``: for
``crop_mode="center"`` and a square input, resize the shorter side to
``floor(size / crop_pct)`` (torchvision ``Resize(int)``), center-crop ``size``, to tensor,
normalize. The crop box is computed from that geometry, the way torchvision computes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from timm.data import create_transform  # at import: the worker forkserver preloads this module, and timm with it

from featurestore.backbone import Preprocessed

if TYPE_CHECKING:
    from PIL import Image

NAN_BOX = (math.nan, math.nan, math.nan, math.nan)
DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT: what timm uses when the config has none


def resized_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(w, h) after torchvision ``Resize(short)``: the shorter side becomes ``short``, the longer is floored."""
    w, h = size
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def center_crop_offset(resized: int, crop: int) -> int:
    """torchvision's center crop offset: ``int(round((resized - crop) / 2))``, Python's round (half to even)."""
    return int(round((resized - crop) / 2.0))


def crop_box(size: tuple[int, int], config: dict[str, Any]) -> tuple[float, float, float, float]:
    """Region (left, top, right, bottom) of an image of ``size`` (w, h) that timm's eval transform keeps.

    In original pixels; NaNs for geometries not modelled here (``crop_mode="border"``, a
    non-square input with ``crop_mode="center"``, or a crop larger than the resized image,
    where torchvision pads).
    """
    w, h = size
    _, ch, cw = config["input_size"]
    pct = config.get("crop_pct") or DEFAULT_CROP_PCT
    mode = config.get("crop_mode") or "center"
    scale_h, scale_w = math.floor(ch / pct), math.floor(cw / pct)
    if mode == "squash":
        rw, rh = scale_w, scale_h
    elif mode == "center" and scale_h == scale_w:
        rw, rh = resized_size((w, h), scale_h)
    else:
        return NAN_BOX
    if ch > rh or cw > rw:
        return NAN_BOX
    left, top = center_crop_offset(rw, cw), center_crop_offset(rh, ch)
    # multiply before dividing: a crop reaching the resized image's edge maps exactly to w / h
    return (left * w / rw, top * h / rh, (left + cw) * w / rw, (top + ch) * h / rh)


class TimmPreprocessor:
    """Picklable: holds only timm's data config; the transform is built again in each process.

    Args:
        config: the resolved data config (``timm.data.resolve_data_config``): ``input_size``,
            ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = dict(config)
        self._transform: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._transform = None

    @property
    def transform(self) -> Any:
        """``timm.data.create_transform(**config, is_training=False)``, built on first use."""
        if self._transform is None:
            cfg = dict(self.config)
            cfg["input_size"] = tuple(cfg["input_size"])
            self._transform = create_transform(**cfg, is_training=False)
        return self._transform

    def __call__(self, image: "Image.Image") -> Preprocessed:
        px = self.transform(image)  # (C, H, W) float32
        return Preprocessed(px.contiguous(), crop_box(image.size, self.config))

    def __repr__(self) -> str:
        return f"TimmPreprocessor({self.config})"


__all__ = ["TimmPreprocessor", "crop_box", "resized_size", "center_crop_offset"]
