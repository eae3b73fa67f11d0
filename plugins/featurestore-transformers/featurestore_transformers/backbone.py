"""transformers vision models as featurestore backbones.

CLS = ``last_hidden_state[:, 0]`` of the model's own ``forward`` (after the final layer
norm for DINOv2/ViT/MAE; CLIP's vision tower applies ``post_layernorm`` only to its
pooled output, so for CLIP both CLS and patches are pre-``post_layernorm``).
Patches = ``last_hidden_state[:, num_prefix_tokens:]``: register tokens (DINOv2 with
registers) and DeiT's distillation token are dropped — they are neither CLS nor patches.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from featurestore.backbone import Backbone, BackboneOutput, Preprocessed
from featurestore.config import TokenLayout
from featurestore.errors import UnsupportedModelError, WeightsNotFoundError
from featurestore_transformers.plugin import is_local

PLUGIN_DIST = "featurestore-transformers"

# model_type -> tokens before the first patch token, excluding registers
PREFIX_TOKENS: dict[str, int] = {
    "dinov2": 1,
    "dinov2_with_registers": 1,
    "vit": 1,
    "vit_mae": 1,
    "vit_msn": 1,
    "deit": 2,  # CLS + distillation token
    "beit": 1,
    "data2vec-vision": 1,
    "clip_vision_model": 1,
    "clip": 1,
}
NO_CLS_HINT = {
    "siglip": "SigLIP has no CLS token; use the open_clip plugin (featurestore-openclip)",
    "siglip_vision_model": "SigLIP has no CLS token; use the open_clip plugin (featurestore-openclip)",
    "ijepa": "I-JEPA has no CLS token",
}


# config keys that do not change what the forward computes from the loaded tensors
# (bookkeeping, labels, load dtype, output switches); everything else is hashed
_CONFIG_NOT_HASHED = frozenset(
    {"transformers_version", "architectures", "dtype", "torch_dtype", "id2label", "label2id", "problem_type",
     "output_attentions", "output_hidden_states", "return_dict", "use_return_dict"}
)


def config_spec(config: Any) -> dict[str, Any]:
    """The model config fields that determine the computation (heads, eps, activation …).

    They live in no tensor, so two directories with equal tensors but another head count
    would otherwise share one hash.
    """
    return {k: v for k, v in sorted(config.to_dict().items()) if not k.startswith("_") and k not in _CONFIG_NOT_HASHED}


_looks_local = is_local

def _not_found(name: str, source: str, reason: str, default_source: str | None) -> WeightsNotFoundError:
    hub = default_source or (source if not _looks_local(source) else "<hub id>")
    return WeightsNotFoundError(
        f"could not load weights for backbone {name!r} from {source!r}: {reason.strip().rstrip('.')}. "
        f"Fix: pass a local directory with --weights DIR (config.json, model.safetensors or pytorch_model.bin, "
        f"preprocessor_config.json; e.g. from `hf download {hub} --local-dir DIR` on a machine with network), "
        f"or make the hub reachable / fill the HF_HOME cache."
    )


def _size_get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


@dataclass
class HFPreprocessor:
    """Picklable: the model's own image processor, plus the crop box in original pixels."""

    processor: Any

    def __call__(self, image: Any) -> Preprocessed:
        px = self.processor(images=image, return_tensors="pt")["pixel_values"][0]  # (C, H, W)
        return Preprocessed(px, self.crop_box(image.size, tuple(px.shape[-2:])))

    def crop_box(self, size: tuple[int, int], out_hw: tuple[int, ...]) -> tuple[float, float, float, float]:
        """Region of the original image the model sees; NaNs when the processor's geometry is unknown."""
        w, h = size
        p = self.processor
        rw, rh = w, h
        if getattr(p, "do_resize", False):
            se, sh, sw = (_size_get(p.size, k) for k in ("shortest_edge", "height", "width"))
            if _size_get(p.size, "longest_edge"):
                return (math.nan,) * 4  # type: ignore[return-value]  # capped resize: geometry not modelled
            if se and not (sh or sw):
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = se, int(se * long / short)
                rw, rh = (new_short, new_long) if w <= h else (new_long, new_short)
            elif sh and sw:
                rw, rh = sw, sh
            else:
                return (math.nan,) * 4  # type: ignore[return-value]
        left = top = 0.0
        cw, ch = rw, rh
        if getattr(p, "do_center_crop", False):
            ch, cw = _size_get(p.crop_size, "height"), _size_get(p.crop_size, "width")
            if type(p).__name__.endswith("Fast"):  # transformers 4 fast processors: torchvision's center_crop rounds
                top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
            else:  # transformers' numpy center_crop and transformers 5's torchvision backend floor
                top, left = (rh - ch) // 2, (rw - cw) // 2
        if (ch, cw) != tuple(out_hw):
            return (math.nan,) * 4  # type: ignore[return-value]
        # multiply before dividing: a crop reaching the resized image's edge maps exactly to w / h
        return (left * w / rw, top * h / rh, (left + cw) * w / rw, (top + ch) * h / rh)


class HFBackbone(Backbone):
    """A loaded transformers vision model."""

    def __init__(self, name: str, source: str, model: Any, processor: Any, model_type: str, revision: str | None):
        self.name = name
        self.source = source
        self.model = model.eval()
        self.processor = processor
        self.model_type = model_type
        self.revision = revision
        cfg = model.config
        self.dim = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0])
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.num_prefix = PREFIX_TOKENS[model_type] + self.num_registers
        self.num_layers = int(cfg.num_hidden_layers)
        # what turns the last block's output into last_hidden_state; intermediate blocks get the same,
        # as DINOv2's linear probes do. CLIP's last_hidden_state is not normed (post_layernorm is for pooling).
        norm = None if model_type == "clip_vision_model" else getattr(model, "layernorm", None)
        self._final_norm = None if isinstance(norm, torch.nn.Identity) else norm
        self._layout = self._probe_layout()

    # -- preprocessing ---------------------------------------------------------
    def preprocessor(self) -> HFPreprocessor:
        return HFPreprocessor(self.processor)

    def preprocess_spec(self) -> dict[str, Any]:
        cfg = {k: v for k, v in self.processor.to_dict().items() if not k.startswith("_") and k != "processor_class"}
        return {"library": "transformers", "class": type(self.processor).__name__, "config": cfg}

    def feature_dim(self, layers: Sequence[int] | None = None) -> int:
        return self.dim if layers is None else self.dim * len(layers)

    def output_spec(self, dense: bool, layers: Sequence[int] | None = None) -> dict[str, Any]:
        arch = config_spec(self.model.config)
        if layers is not None:
            norm = "layernorm" if self._final_norm is not None else None
            spec: dict[str, Any] = {
                "architecture": arch,
                "layer": {"blocks": list(layers), "source": "hidden_states[block + 1]", "norm": norm},
                "cls": "concat over blocks of block_output[:, 0]",
                "patches": f"concat on channels over blocks of block_output[:, {self.num_prefix}:]" if dense else None,
                "normalize": None,
                "compute_dtype": "float32",
            }
            if self.model_type == "vit_mae":
                spec["mae"] = {"mask_ratio": 0.0, "noise": "arange (identity order)"}
            return spec
        spec = {
            "architecture": arch,
            "layer": "last_hidden_state",
            "cls": "last_hidden_state[:, 0]",
            "patches": f"last_hidden_state[:, {self.num_prefix}:]" if dense else None,
            "normalize": None,
            "compute_dtype": "float32",
        }
        if self.model_type == "vit_mae":
            spec["mae"] = {"mask_ratio": 0.0, "noise": "arange (identity order)"}
        return spec

    def _probe_layout(self) -> TokenLayout:
        from PIL import Image

        px = self.processor(images=Image.new("RGB", (64, 48), (128, 128, 128)), return_tensors="pt")["pixel_values"]
        h, w = px.shape[-2:]
        return TokenLayout(
            grid_h=h // self.patch_size,
            grid_w=w // self.patch_size,
            patch_size=self.patch_size,
            num_prefix_tokens=self.num_prefix,
            num_register_tokens=self.num_registers,
            cls_source="last_hidden_state[:, 0]",
            input_h=int(h),
            input_w=int(w),
        )

    def token_layout(self, layers: Sequence[int] | None = None) -> TokenLayout:
        if layers is None:
            return self._layout
        norm = " after layernorm" if self._final_norm is not None else ""
        return self._layout.model_copy(update={"cls_source": f"concat of hidden_states[b + 1][:, 0]{norm} for blocks b in {list(layers)}"})

    # -- model ---------------------------------------------------------------
    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.model.state_dict().items()

    def to(self, device: torch.device) -> "HFBackbone":
        self.model.to(device)
        return self

    def forward(self, pixel_values: torch.Tensor, *, dense: bool, layers: Sequence[int] | None = None) -> BackboneOutput:
        kwargs: dict[str, Any] = {}
        b, _, h, w = pixel_values.shape  # (B, C, H, W)
        gh, gw = h // self.patch_size, w // self.patch_size
        if self.model_type == "vit_mae":
            # mask_ratio is 0; an identity noise keeps the patches in raster order
            kwargs["noise"] = torch.arange(gh * gw, device=pixel_values.device, dtype=torch.float32).expand(b, -1)
        if layers is None:
            hidden = self.model(pixel_values=pixel_values, **kwargs).last_hidden_state  # (B, T, D)
            blocks = [hidden]
        else:
            states = self.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs).hidden_states
            blocks = [states[i + 1] for i in layers]  # states[0] is the embedding output; each (B, T, D)
            if self._final_norm is not None:
                blocks = [self._final_norm(h) for h in blocks]
        cls = torch.cat([h[:, 0] for h in blocks], dim=-1)  # (B, D * L)
        patches = None
        if dense:
            patches = torch.cat([h[:, self.num_prefix :] for h in blocks], dim=-1)  # (B, N, D * L)
            if patches.shape[1] != gh * gw:
                raise UnsupportedModelError(
                    f"{self.name}: got {patches.shape[1]} patch tokens for a {gh}x{gw} grid; "
                    f"this model's token layout is not the ViT one the transformers plugin supports"
                )
        layout = self._layout if (gh, gw) == (self._layout.grid_h, self._layout.grid_w) else self._layout.model_copy(
            update={"grid_h": gh, "grid_w": gw, "input_h": h, "input_w": w}
        )
        return BackboneOutput(cls=cls, patches=patches, layout=layout)

    def card_info(self) -> dict[str, Any]:
        import transformers

        return {
            "plugin": PLUGIN_DIST,
            "plugin_version": metadata.version(PLUGIN_DIST),
            "weights_source": self.source,
            "weights_revision": self.revision,
            "architecture": type(self.model).__name__,
            "library_versions": {"transformers": transformers.__version__},
            "token_layout": self._layout.model_dump(),
        }


def load_backbone(name: str, source: str, *, expect_dim: int | None = None, default_source: str | None = None) -> HFBackbone:
    """Load model + image processor from a hub id or a local directory.

    Raises:
        WeightsNotFoundError: the source has no loadable model (names the source and the fix).
        UnsupportedModelError: the model has no CLS token or an unexpected width.
    """
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        from featurestore.errors import MissingDependencyError

        raise MissingDependencyError("transformers", f"backbone {name!r}") from exc

    from featurestore import hub

    if _looks_local(source):
        path = Path(source).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise _not_found(name, str(path), "no config.json in that directory" if path.is_dir() else "no such directory", default_source)
        source = str(path)
        access = contextlib.nullcontext()
    else:  # hub unreachable: the cache only, no retries (or at once the fix, when not cached)
        access = hub.access(name, source)
    with access:
        return _load(name, source, expect_dim=expect_dim, default_source=default_source)


def _load(name: str, source: str, *, expect_dim: int | None, default_source: str | None) -> HFBackbone:
    """:func:`load_backbone` once ``source`` is a checked directory or a hub id."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise _not_found(name, source, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, default_source) from exc
    model_type = config.model_type
    if model_type not in PREFIX_TOKENS:
        hint = NO_CLS_HINT.get(model_type, f"supported model types: {', '.join(sorted(PREFIX_TOKENS))}")
        raise UnsupportedModelError(f"backbone {name!r}: {source!r} is a {model_type!r} model, which the transformers plugin cannot use ({hint})")
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise here
    try:
        if model_type == "clip":
            model = CLIPVisionModel.from_pretrained(source, dtype=torch.float32)
            model_type = "clip_vision_model"
        elif model_type == "vit_mae":
            model = AutoModel.from_pretrained(source, mask_ratio=0.0, dtype=torch.float32)  # features need every patch
        else:
            # float32 whatever the checkpoint's dtype: the output spec says compute_dtype float32
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
        processor = AutoImageProcessor.from_pretrained(source)
    except Exception as exc:
        raise _not_found(name, source, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, default_source) from exc
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    if expect_dim is not None and int(model.config.hidden_size) != expect_dim:
        raise UnsupportedModelError(
            f"backbone {name!r} has width {expect_dim}, but the weights at {source!r} are a {type(model).__name__} "
            f"of width {model.config.hidden_size}. Fix: use --backbone hf:{source} for other models."
        )
    revision = getattr(config, "_commit_hash", None)
    return HFBackbone(name, source, model, processor, model_type, revision)
