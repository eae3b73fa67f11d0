"""``example_patchnet`` as a featurestore :class:`~featurestore.backbone.Backbone`.

Weights come from one safetensors file (``--weights FILE``), never from a pickle and
never from the network. CLS = token 0 of :class:`~featurestore_example.model.PatchNet`'s
output (after its final LayerNorm); patches = tokens 1..64, an 8x8 row-major grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from featurestore.backbone import Backbone, BackboneOutput, Preprocessed
from featurestore.config import TokenLayout
from featurestore.errors import UnsupportedModelError, WeightsNotFoundError
from featurestore_example.model import PatchNet, PatchNetConfig

PLUGIN_DIST = "featurestore-example"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAKE_WEIGHTS_HINT = "python -m featurestore_example.make_weights patchnet.safetensors [--seed N]"


@dataclass(frozen=True)
class PatchNetPreprocessor:
    """Resize the shortest side to ``size``, center-crop ``size`` x ``size``, normalise.

    A module-level frozen dataclass of plain numbers, so it pickles into DataLoader
    worker processes (a lambda or a closure would not).

    Resize and crop are one Pillow resample of the centred square box of the original
    image (``Image.resize(box=...)``): no intermediate size is rounded, so the crop box
    reported in original pixels is exactly the region the model sees.
    """

    size: int = 64
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` in original pixels: the centred square of side ``min(width, height)``."""
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2  # exact in float: halves at most
        return (left, top, left + side, top + side)

    def __call__(self, image: Image.Image) -> Preprocessed:
        box = self.crop_box(*image.size)
        # the core hands over RGB already; a direct caller may not
        rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0  # (H, W, C) in [0, 1]
        px = torch.from_numpy(arr).permute(2, 0, 1)  # (C, H, W)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return Preprocessed(((px - mean) / std).contiguous(), box)

    def spec(self) -> dict[str, Any]:
        """Every parameter that changes the pixels, JSON-able (hashed into the model hash)."""
        return {
            "library": "Pillow",
            "resize": {"shortest_side": self.size, "resample": "bicubic", "antialias": True},
            "crop": {"center": [self.size, self.size], "method": "one resample of the centred square box"},
            "rescale": "1/255",
            "mean": list(self.mean),
            "std": list(self.std),
            "channels": "RGB",
            "layout": "CHW",
            "dtype": "float32",
        }


class PatchNetBackbone(Backbone):
    """A loaded PatchNet; built by :func:`load_backbone` (or directly, in tests)."""

    def __init__(self, name: str, model: PatchNet, weights_source: str):
        self.name = name
        self.model = model.eval()
        self.weights_source = weights_source
        cfg = model.config
        self.dim = cfg.dim
        self._preprocessor = PatchNetPreprocessor(size=cfg.image_size)
        self._layout = TokenLayout(
            grid_h=cfg.grid,
            grid_w=cfg.grid,
            patch_size=cfg.patch_size,
            num_prefix_tokens=1,  # the CLS token
            num_register_tokens=0,
            cls_source="norm(tokens)[:, 0] (learned CLS token after the final LayerNorm)",
            input_h=cfg.image_size,
            input_w=cfg.image_size,
        )

    # -- preprocessing ---------------------------------------------------------
    def preprocessor(self) -> PatchNetPreprocessor:
        return self._preprocessor

    def preprocess_spec(self) -> dict[str, Any]:
        return self._preprocessor.spec()

    # -- output ------------------------------------------------------------------
    def output_spec(self, dense: bool) -> dict[str, Any]:
        return {
            "layer": "final LayerNorm output",
            "cls": "tokens[:, 0]",
            "patches": "tokens[:, 1:] (row-major grid)" if dense else None,
            "normalize": None,
            "compute_dtype": "float32",
            # Hyperparameters that change the output but live in no tensor (heads,
            # LayerNorm eps): the weights hash cannot see them, so they are hashed here.
            "model": {"architecture": "PatchNet", "activation": "gelu (erf)", **self.model.config.as_dict()},
        }

    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        # state_dict: every parameter and persistent buffer, under stable names
        return self.model.state_dict().items()

    def to(self, device: torch.device) -> "PatchNetBackbone":
        self.model.to(device)
        return self

    def forward(self, pixel_values: torch.Tensor, *, dense: bool) -> BackboneOutput:
        tokens = self.model(pixel_values)  # (B, 1 + N, D)
        cls = tokens[:, 0]  # (B, D)
        patches = tokens[:, 1:] if dense else None  # (B, N, D)
        return BackboneOutput(cls=cls, patches=patches, layout=self._layout)

    def card_info(self) -> dict[str, Any]:
        import safetensors

        return {
            "plugin": PLUGIN_DIST,
            "plugin_version": metadata.version(PLUGIN_DIST),
            "weights_source": self.weights_source,
            "weights_revision": None,  # a local file has no revision; weights_sha256 identifies it
            "architecture": type(self.model).__name__,
            "library_versions": {
                "pillow": Image.__version__,  # its resampling defines the pixels
                "numpy": np.__version__,
                "safetensors": safetensors.__version__,
            },
            "token_layout": self._layout.model_dump(),
        }


# -- loading -------------------------------------------------------------------


def _not_found(name: str, weights: str | None, reason: str) -> WeightsNotFoundError:
    where = "no weights file was given" if weights is None else f"cannot load weights from {weights!r}: {reason}"
    return WeightsNotFoundError(
        f"backbone {name!r}: {where}. It has no download: its weights are a local safetensors file. "
        f"Fix: pass one with --weights FILE (Python: weights='FILE'); create a random one with "
        f"`{MAKE_WEIGHTS_HINT}`."
    )


def read_weights(name: str, weights: str | None) -> tuple[Path, dict[str, torch.Tensor]]:
    """Resolve ``weights`` to a file and read its tensors with safetensors (no pickle).

    Raises:
        WeightsNotFoundError: ``weights`` is None, missing, a directory, or not a safetensors file.
    """
    if weights is None:
        raise _not_found(name, None, "")
    path = Path(weights).expanduser().resolve()
    if path.is_dir():
        raise _not_found(name, str(path), "it is a directory; pass the .safetensors file itself")
    if not path.is_file():
        raise _not_found(name, str(path), "no such file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return path, load_file(path)
    except (SafetensorError, OSError) as exc:
        raise _not_found(name, str(path), f"not a readable safetensors file ({exc})") from exc


def check_tensors(name: str, path: Path, tensors: dict[str, torch.Tensor], model: PatchNet) -> None:
    """Fail unless ``tensors`` has exactly the names and shapes of ``model``'s state dict.

    Raises:
        UnsupportedModelError: names the missing, unexpected or mis-shaped tensors.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    for k in sorted(set(expected) & set(tensors)):
        if tuple(tensors[k].shape) != expected[k]:
            problems.append(f"{k} has shape {list(tensors[k].shape)}, PatchNet needs {list(expected[k])}")
    if problems:
        raise UnsupportedModelError(
            f"backbone {name!r}: {str(path)!r} is not a PatchNet weights file ({model.config.as_dict()}): "
            f"{'; '.join(problems)}. Fix: create a matching file with `{MAKE_WEIGHTS_HINT}`."
        )


def load_backbone(name: str, weights: str | None, config: PatchNetConfig | None = None) -> PatchNetBackbone:
    """Build PatchNet and load its weights from the safetensors file ``weights``.

    Args:
        name: the name the backbone was asked for (``example_patchnet``).
        weights: path of a safetensors file holding PatchNet's state dict.
        config: hyperparameters; the default is the registered ``example_patchnet``.

    Raises:
        WeightsNotFoundError: no usable weights file (the message says how to make one).
        UnsupportedModelError: the file holds other tensors than PatchNet's.
    """
    path, tensors = read_weights(name, weights)
    model = PatchNet(config)
    check_tensors(name, path, tensors, model)
    model.load_state_dict(tensors, strict=True)  # copies (and casts) into the float32 parameters
    return PatchNetBackbone(name, model, str(path))
