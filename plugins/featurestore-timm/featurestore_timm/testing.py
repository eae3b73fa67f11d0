"""Tiny random timm models saved to disk, loaded back through ``--weights``.

Nothing is downloaded: timm's own tiny ``test_*`` architectures (and small stock ones such
as ``mobilenetv3_small_050``) are built with ``pretrained=False``, their weights made
non-trivial, and saved as the files a user would pass with ``--weights``.

The fixtures (``fs_*``) are opt-in: ``pytest_plugins = ["featurestore_timm.testing"]`` in a test
suite's top-level ``conftest.py``. The unprefixed names still work for one release, with a
``DeprecationWarning``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from featurestore.testing import deprecated_fixture_alias

FORMATS = ("safetensors", "pth", "dir")


def randomize_(model: Any, seed: int) -> None:
    """Give every tensor a non-degenerate random value, in place.

    timm's init leaves parts of a fresh model inert (zero-initialised last BatchNorm of each
    ResNet block, ConvNeXt layer scale 1e-6, BatchNorm running stats 0 / 1); a test built on
    such a model could not notice a plugin that skipped those parts or ran in train mode.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * noise)
            else:
                t.add_(0.05 * noise)


def make_tiny_timm(
    directory: Path,
    name: str = "test_resnet",
    *,
    fmt: str = "safetensors",
    seed: int = 0,
    wrap: str | None = None,
    num_classes: int = 10,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
) -> Path:
    """Build ``timm.create_model(name, pretrained=False)`` with random weights and save it.

    Args:
        directory: where to write (created if missing).
        name: a timm architecture, e.g. ``test_resnet``, ``test_vit``, ``test_efficientnet``,
            ``mobilenetv3_small_050``.
        fmt: ``"safetensors"`` (``<name>.safetensors``), ``"pth"`` (``<name>.pth``, written with
            ``torch.save`` of a plain state dict) or ``"dir"`` (a timm export directory,
            ``timm.models.save_for_hf``: ``config.json`` + ``model.safetensors``).
        seed: seeds the weights; the same seed gives the same tensors.
        wrap: for ``"pth"``, nest the state dict under this key (``"state_dict"``, ``"model"``).
        num_classes: classifier width saved with the weights (the plugin ignores the classifier).
        pretrained_cfg_overlay: for ``"dir"``, preprocessing overrides written to config.json,
            e.g. ``{"input_size": (3, 64, 64)}``.

    Returns:
        The file (or directory, for ``"dir"``) to pass as ``--weights``.
    """
    import timm
    import torch

    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {FORMATS}")
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"num_classes": num_classes}
    if pretrained_cfg_overlay:
        kw["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    randomize_(model, seed)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = directory / f"{name}.safetensors"
        save_file(state, str(path))
        return path
    if fmt == "pth":
        path = directory / f"{name}.pth"
        torch.save({wrap: state} if wrap else state, path)
        return path
    from timm.models import save_for_hf

    save_for_hf(model, str(directory), safe_serialization=True)
    return directory


def reference_model(name: str, weights: Path, num_classes: int = 10) -> Any:
    """The model a timm user would load: ``create_model(name, num_classes=...)`` + ``load_state_dict``.

    Independent of the plugin's loading code, for comparisons. ``weights`` is a .safetensors file.
    """
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def reference_pixels(model: Any, image_path: Path) -> Any:
    """(1, C, H, W): timm's own eval transform of ``PIL.Image.open(image_path).convert("RGB")``."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    with Image.open(image_path) as im:
        return transform(im.convert("RGB")).unsqueeze(0)


@pytest.fixture(scope="session")
def fs_tiny_timm_factory(tmp_path_factory: pytest.TempPathFactory):
    """``factory(name, **kw) -> Path``: :func:`make_tiny_timm` in a fresh directory."""

    def factory(name: str = "test_resnet", **kw: Any) -> Path:
        return make_tiny_timm(tmp_path_factory.mktemp(f"timm_{name}"), name, **kw)

    return factory


@pytest.fixture(scope="session")
def fs_tiny_timm_resnet(fs_tiny_timm_factory) -> Path:
    """A tiny random ``test_resnet`` (96-wide, 160x160 input, 5x5 final map) as .safetensors."""
    return fs_tiny_timm_factory("test_resnet")


@pytest.fixture(scope="session")
def fs_tiny_timm_vit(fs_tiny_timm_factory) -> Path:
    """A tiny random ``test_vit`` (64-wide, patch 16, 160x160 input: 10x10 patches + CLS) as .safetensors."""
    return fs_tiny_timm_factory("test_vit")


# the names before the fs_ prefix, for one release
_tiny_timm_factory = deprecated_fixture_alias("tiny_timm_factory", "fs_tiny_timm_factory", scope="session")
_tiny_timm_resnet = deprecated_fixture_alias("tiny_timm_resnet", "fs_tiny_timm_resnet", scope="session")
_tiny_timm_vit = deprecated_fixture_alias("tiny_timm_vit", "fs_tiny_timm_vit", scope="session")
