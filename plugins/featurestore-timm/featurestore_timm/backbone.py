"""timm models (CNNs and ViTs) as featurestore backbones.

Default output:

* ``cls`` = ``model.forward_head(model.forward_features(x), pre_logits=True)``: timm's own
  pooled pre-logits (global average pool for CNNs, the CLS token after the final norm for
  ViTs with ``global_pool="token"``; MobileNetV3 adds its ``conv_head``, so ``cls`` is wider
  than the feature map there);
* ``patches`` = the ``forward_features`` output as tokens, row-major: a CNN's final feature
  map ``(B, C, H, W)`` → ``(B, H*W, C)``, stride = patch size; a ViT's ``(B, T, C)`` with its
  ``num_prefix_tokens`` (CLS and register tokens) dropped.

Intermediate layers (``layers``) come from ``forward_intermediates``: for a CNN a layer is a
stage (one ``feature_info`` entry) and its global vector is the spatial mean of the stage's
feature map; for a ViT a layer is a block and its global vector is the block's CLS token
after the final norm (as DINOv2's linear probes do), or the mean patch token when the model
has no CLS token.
"""

from __future__ import annotations

import inspect
import math
from importlib import metadata
from typing import Any, Iterable, Sequence

import torch

from featurestore.backbone import Backbone, BackboneOutput
from featurestore.config import TokenLayout
from featurestore.errors import ConfigError, UnsupportedModelError
from featurestore_timm.loading import LoadedModel
from featurestore_timm.preprocess import TimmPreprocessor

PLUGIN_DIST = "featurestore-timm"
CLS_SOURCE = "forward_head(forward_features(x), pre_logits=True)"


def _fmt_of(model: torch.nn.Module, feats: torch.Tensor) -> str:
    """Layout of a ``forward_features`` output: ``NCHW``, ``NHWC`` (Swin, MambaOut …) or ``NLC`` (ViTs)."""
    if feats.ndim == 3:
        return "NLC"
    if feats.ndim != 4:
        raise UnsupportedModelError(
            f"timm model {type(model).__name__}: forward_features returned shape {tuple(feats.shape)}; "
            f"featurestore-timm needs (B, C, H, W), (B, H, W, C) or (B, tokens, C)."
        )
    nf = getattr(model, "num_features", None)
    first, last = feats.shape[1], feats.shape[3]
    if first == nf and last != nf:
        return "NCHW"
    if last == nf and first != nf:
        return "NHWC"
    return "NHWC" if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC") else "NCHW"


class TimmBackbone(Backbone):
    """A loaded timm model.

    Args:
        name: backbone name as asked for (``resnet50``, ``timm:test_vit`` …).
        loaded: the model with its weights, from :func:`featurestore_timm.loading.load_model`.
    """

    def __init__(self, name: str, loaded: LoadedModel):
        self.name = name
        self.loaded = loaded
        self.arch = loaded.arch
        self.model = loaded.model.eval()
        self.data_config = loaded.data_config
        chans, self.input_h, self.input_w = (int(v) for v in self.data_config["input_size"])
        self.num_prefix = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.num_registers = int(getattr(self.model, "num_reg_tokens", 0) or 0)
        self.has_cls_token = getattr(self.model, "cls_token", None) is not None
        with torch.inference_mode():
            feats = self.model.forward_features(torch.zeros(1, chans, self.input_h, self.input_w))
            pooled = self.model.forward_head(feats, pre_logits=True)
        if pooled.ndim != 2:
            raise UnsupportedModelError(
                f"backbone {name!r}: forward_head(pre_logits=True) of {self.arch!r} returned shape {tuple(pooled.shape)}, "
                f"not (B, D), so it has no global vector featurestore can store. Fix: use another timm model."
            )
        self.dim = int(pooled.shape[1])
        self.fmt = _fmt_of(self.model, feats)
        if self.fmt != "NLC":
            self.num_prefix = 0  # hybrid CNNs may carry the attribute; their feature maps have no prefix tokens
        tokens, grid = self._tokens(feats, self.input_h, self.input_w)
        self._patch_dim = int(tokens.shape[-1])
        self._layout = self._make_layout(grid, self._stride(grid[0], None), CLS_SOURCE)
        self.num_layers = self._count_layers()
        self._layer_shapes: list[tuple[int, int, int]] | None = None  # (width, grid_h, grid_w) per layer

    # -- shapes ----------------------------------------------------------------
    def _token_grid(self, h: int, w: int, n: int) -> tuple[int, int]:
        pe = getattr(self.model, "patch_embed", None)
        if pe is not None and hasattr(pe, "dynamic_feat_size"):
            gh, gw = pe.dynamic_feat_size((h, w))
        elif pe is not None and getattr(pe, "grid_size", None):
            gh, gw = pe.grid_size
        else:
            gh = gw = math.isqrt(n)
        if gh * gw != n:
            raise UnsupportedModelError(
                f"backbone {self.name!r}: {self.arch!r} returned {n} patch tokens after its {self.num_prefix} prefix tokens, "
                f"which is not a {gh}x{gw} grid; its token layout is not the ViT one featurestore-timm supports."
            )
        return int(gh), int(gw)

    def _tokens(self, feats: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """``forward_features`` output → patch tokens (B, N, C), row-major, and their grid."""
        if self.fmt == "NCHW":
            b, c, gh, gw = feats.shape
            return feats.flatten(2).transpose(1, 2), (gh, gw)  # (B, H*W, C)
        if self.fmt == "NHWC":
            b, gh, gw, c = feats.shape
            return feats.reshape(b, gh * gw, c), (gh, gw)  # (B, H*W, C)
        patches = feats[:, self.num_prefix :]  # (B, N, C)
        return patches, self._token_grid(h, w, patches.shape[1])

    def _stride(self, grid_h: int, index: int | None) -> int:
        """Input pixels per token: timm's ``feature_info`` reduction when it fits the grid, else input / grid."""
        info = getattr(self.model, "feature_info", None)
        try:
            red = int(info[-1 if index is None else index]["reduction"])  # type: ignore[index]
        except (TypeError, KeyError, IndexError, ValueError):
            red = 0
        if red and math.ceil(self.input_h / red) == grid_h:
            return red
        return max(1, round(self.input_h / grid_h))

    def _make_layout(self, grid: tuple[int, int], stride: int, cls_source: str, h: int | None = None, w: int | None = None) -> TokenLayout:
        return TokenLayout(
            grid_h=int(grid[0]),
            grid_w=int(grid[1]),
            patch_size=int(stride),
            num_prefix_tokens=self.num_prefix,
            num_register_tokens=self.num_registers if self.fmt == "NLC" else 0,
            cls_source=cls_source,
            input_h=int(h or self.input_h),
            input_w=int(w or self.input_w),
        )

    # -- layers ------------------------------------------------------------------
    def _fi_kwargs(self) -> dict[str, Any] | None:
        """Keyword arguments for ``forward_intermediates``, or None when this model cannot give layers."""
        fn = getattr(self.model, "forward_intermediates", None)
        info = getattr(self.model, "feature_info", None)
        if fn is None or not info:
            return None
        params = inspect.signature(fn).parameters
        if "intermediates_only" not in params:
            return None
        kw: dict[str, Any] = {"intermediates_only": True}
        if self.fmt == "NLC":
            if "norm" not in params or "output_fmt" not in params:
                return None
            kw.update(norm=True, output_fmt="NLC")
            if self.has_cls_token:
                if "return_prefix_tokens" not in params:
                    return None
                kw["return_prefix_tokens"] = True
        elif "norm" in params:
            kw["norm"] = False
        return kw

    def _count_layers(self) -> int | None:
        if self._fi_kwargs() is None:
            return None
        return len(self.model.feature_info)  # type: ignore[arg-type]

    def _run_layers(self, px: torch.Tensor, layers: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
        """Per chosen layer, in the order given: (global (B, C), tokens (B, N, C), grid)."""
        kw = self._fi_kwargs()
        if kw is None or self.num_layers is None:
            raise UnsupportedModelError(f"backbone {self.name!r} cannot output intermediate layers. Fix: leave out --layers.")
        wanted = sorted(set(layers))
        outs = self.model.forward_intermediates(px, indices=wanted, **kw)
        if len(outs) != len(wanted):
            raise UnsupportedModelError(
                f"backbone {self.name!r}: forward_intermediates of {self.arch!r} returned {len(outs)} outputs for "
                f"layers {wanted}; its layers do not match its feature_info. Fix: leave out --layers."
            )
        h, w = px.shape[-2:]
        by_index = {}
        for i, out in zip(wanted, outs, strict=True):
            if self.fmt == "NLC":
                tokens, prefix = out if isinstance(out, tuple) else (out, None)  # (B, N, C), (B, P, C)
                glob = prefix[:, 0] if prefix is not None else tokens.mean(dim=1)  # (B, C)
                grid = self._token_grid(int(h), int(w), tokens.shape[1])
            else:
                gh, gw = out.shape[-2:]  # out: (B, C, H, W)
                glob = out.mean(dim=(2, 3))  # (B, C)
                tokens, grid = out.flatten(2).transpose(1, 2), (gh, gw)  # (B, H*W, C)
            by_index[i] = (glob, tokens, grid)
        return [by_index[i] for i in layers]

    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(width, grid_h, grid_w) of every layer at the model's input size (probed once)."""
        if self._layer_shapes is None:
            if self.num_layers is None:
                raise UnsupportedModelError(f"backbone {self.name!r} cannot output intermediate layers. Fix: leave out --layers.")
            chans = int(self.data_config["input_size"][0])
            device = next(iter(self.model.parameters()), torch.zeros(())).device  # the model may be on a GPU by now
            with torch.inference_mode():
                outs = self._run_layers(torch.zeros(1, chans, self.input_h, self.input_w, device=device), range(self.num_layers))
            self._layer_shapes = [(int(g.shape[1]), *grid) for g, _, grid in outs]
        return self._layer_shapes

    def _layer_unit(self) -> str:
        return "block" if self.fmt == "NLC" else "stage"

    def _check_one_grid(self, layers: Sequence[int]) -> tuple[int, int]:
        shapes = self.layer_shapes()
        grids = {(shapes[i][1], shapes[i][2]) for i in layers}
        if len(grids) > 1:
            parts = ", ".join(f"{self._layer_unit()} {i}: {shapes[i][1]}x{shapes[i][2]} (stride {self._stride(shapes[i][1], i)})" for i in layers)
            raise ConfigError(
                f"--layers {list(layers)} with --dense on backbone {self.name!r}: the chosen {self._layer_unit()}s have "
                f"feature maps of different grids ({parts}), so their patch tokens cannot be concatenated position by "
                f"position. Fix: extract one {self._layer_unit()} per run (e.g. --layers {layers[0]} --dense, then "
                f"--layers {layers[-1]} --dense), or leave out --dense to store only their pooled vectors."
            )
        return grids.pop()

    def feature_dim(self, layers: Sequence[int] | None = None) -> int:
        if layers is None:
            return self.dim
        shapes = self.layer_shapes()
        return sum(shapes[i][0] for i in layers)

    def patch_dim(self, layers: Sequence[int] | None = None) -> int:
        if layers is None:
            return self._patch_dim
        self._check_one_grid(layers)
        return self.feature_dim(layers)

    def _layer_cls_source(self, layers: Sequence[int]) -> str:
        if self.fmt == "NLC":
            what = "prefix token 0 (CLS)" if self.has_cls_token else "mean of the patch tokens"
            return f"concat of forward_intermediates(norm=True) block b's {what} after the final norm, for b in {list(layers)}"
        return f"concat of the spatial mean of forward_intermediates stage s's feature map, for s in {list(layers)}"

    def token_layout(self, layers: Sequence[int] | None = None) -> TokenLayout | None:
        if layers is None:
            return self._layout
        shapes = self.layer_shapes()
        grids = {(shapes[i][1], shapes[i][2]) for i in layers}
        if len(grids) > 1:
            return None  # no single patch grid: only the pooled vectors can be stored
        grid = grids.pop()
        return self._make_layout(grid, self._stride(grid[0], layers[0]), self._layer_cls_source(layers))

    # -- specs ---------------------------------------------------------------------
    def preprocessor(self) -> TimmPreprocessor:
        return TimmPreprocessor(self.data_config)

    def preprocess_spec(self) -> dict[str, Any]:
        return {"library": "timm", "transform": "create_transform(**data_config, is_training=False)", "data_config": self.data_config}

    def output_spec(self, dense: bool, layers: Sequence[int] | None = None) -> dict[str, Any]:
        model = {"library": "timm", "architecture": self.arch, "model_args": dict(sorted(self.loaded.model_args.items())), "num_classes": 0}
        if layers is None:
            if self.fmt == "NLC":
                patches = f"forward_features[:, {self.num_prefix}:] (prefix tokens dropped), row-major"
            else:
                patches = f"forward_features ({self.fmt}) flattened row-major to (B, H*W, C)"
            return {
                "model": model,
                "layer": "forward_features",
                "cls": CLS_SOURCE,
                "patches": patches if dense else None,
                "normalize": None,
                "compute_dtype": "float32",
            }
        if dense:
            self._check_one_grid(layers)
        if self.fmt == "NLC":
            layer = {"indices": list(layers), "unit": "block", "source": "forward_intermediates", "norm": "final norm"}
            cls = "concat over blocks of " + ("prefix token 0 (CLS)" if self.has_cls_token else "the mean patch token")
            patches = "concat on channels over blocks of the patch tokens (prefix tokens dropped), row-major"
        else:
            layer = {"indices": list(layers), "unit": "stage (feature_info)", "source": "forward_intermediates", "norm": None}
            cls = "concat over stages of the stage feature map's spatial mean"
            patches = "concat on channels over stages of the stage feature map (B, C, H, W) flattened row-major"
        return {
            "model": model,
            "layer": layer,
            "cls": cls,
            "patches": patches if dense else None,
            "normalize": None,
            "compute_dtype": "float32",
        }

    # -- model -----------------------------------------------------------------------
    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.model.state_dict().items()

    def to(self, device: torch.device) -> "TimmBackbone":
        self.model.to(device)
        return self

    def forward(self, pixel_values: torch.Tensor, *, dense: bool, layers: Sequence[int] | None = None) -> BackboneOutput:
        h, w = (int(v) for v in pixel_values.shape[-2:])  # (B, C, H, W)
        if layers is None:
            feats = self.model.forward_features(pixel_values)
            cls = self.model.forward_head(feats, pre_logits=True)  # (B, D)
            patches, grid = self._tokens(feats, h, w) if dense else (None, (self._layout.grid_h, self._layout.grid_w))
            stride, source = self._layout.patch_size, CLS_SOURCE
        else:
            outs = self._run_layers(pixel_values, layers)
            cls = torch.cat([g for g, _, _ in outs], dim=-1)  # (B, sum C)
            grid = outs[0][2]
            patches = None
            if dense:
                if len({g for _, _, g in outs}) > 1:
                    self._check_one_grid(layers)
                patches = torch.cat([t for _, t, _ in outs], dim=-1)  # (B, N, sum C)
            stride, source = self._stride(grid[0], layers[0]), self._layer_cls_source(layers)
        layout = self._make_layout(grid, stride, source, h, w)
        return BackboneOutput(cls=cls, patches=patches, layout=layout)

    def card_info(self) -> dict[str, Any]:
        import timm

        return {
            "plugin": PLUGIN_DIST,
            "plugin_version": metadata.version(PLUGIN_DIST),
            "weights_source": self.loaded.source,
            "weights_revision": self.loaded.revision,
            "architecture": f"{self.arch} ({type(self.model).__name__})",
            "library_versions": {"timm": timm.__version__},
            "token_layout": self._layout.model_dump(),
        }


__all__ = ["TimmBackbone", "PLUGIN_DIST"]
