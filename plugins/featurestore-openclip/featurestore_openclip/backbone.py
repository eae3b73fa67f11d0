"""open_clip models as featurestore backbones, with their text towers.

``cls`` is ``model.encode_image(x)``: the *projected* image embedding, not normalised, in
the space of ``encode_text``. What it pools depends on the model and is written in the
token layout's ``cls_source``: OpenAI/LAION CLIP ViTs use ``proj(ln_post(x[:, 0]))`` of the
class token; SigLIP has no class token, its MAP attention-pooling head stands in.

Dense ``patches`` are the visual trunk's last block tokens after its final norm, with the
prefix (class / register) tokens dropped: width = the trunk width, not the embedding width,
and not projected. With ``layers``, each chosen block's tokens get the same final norm; its
global vector is the class token when the trunk has one, else the mean of its patch tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable, Sequence

import torch

from featurestore.backbone import Backbone, BackboneOutput, Preprocessed, ZeroShotHead
from featurestore.config import TokenLayout
from featurestore.errors import UnsupportedModelError

PLUGIN_DIST = "featurestore-openclip"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


@dataclass
class OpenCLIPPreprocessor:
    """Picklable: open_clip's own eval transform, plus the crop box in original pixels."""

    transform: Any
    cfg: dict[str, Any]

    def __call__(self, image: Any) -> Preprocessed:
        px = self.transform(image)  # (C, H, W)
        return Preprocessed(px, self.crop_box(image.size))

    def crop_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """Region of the original image the model sees (NaN where open_clip pads: ``longest``)."""
        w, h = size
        th, tw = _pair(self.cfg.get("size", 224))
        mode = self.cfg.get("resize_mode", "shortest")
        if mode == "squash":
            return (0.0, 0.0, float(w), float(h))
        if mode != "shortest" or th != tw:
            return (math.nan,) * 4  # type: ignore[return-value]
        # torchvision Resize(int): short side -> th, long side -> int(th * long / short)
        if w <= h:
            rw, rh = th, int(th * h / w)
        else:
            rw, rh = int(th * w / h), th
        # torchvision CenterCrop rounds the offset
        top, left = int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0))
        return (left * w / rw, top * h / rh, (left + tw) * w / rw, (top + th) * h / rh)


def _vocab_digest(tokenizer: Any) -> str | None:
    vocab = getattr(tokenizer, "encoder", None)
    if vocab is None and hasattr(getattr(tokenizer, "tokenizer", None), "get_vocab"):
        vocab = tokenizer.tokenizer.get_vocab()
    if not vocab:
        return None
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")).hexdigest()


class OpenCLIPBackbone(Backbone):
    """A loaded open_clip model (image and text towers)."""

    def __init__(self, name: str, model_name: str, source: str, model: Any, model_cfg: dict[str, Any], tokenizer: Any):
        import open_clip

        self.name = name
        self.model_name = model_name
        self.source = source
        self.model = model.eval()
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")
        visual = model.visual
        self.preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
        self.dim = self.text_dim = int(self._probe_embed_dim())
        self.kind, self._trunk = self._visual_kind(visual)
        if self.kind == "vit":
            self.width = int(visual.conv1.out_channels)
            self.patch = _pair(visual.patch_size)
            self.num_prefix = 1  # open_clip's VisionTransformer always has its class token
            self.has_cls_token = True
            self.num_layers = len(visual.transformer.resblocks)
        elif self.kind == "timm_vit":
            t = self._trunk
            self.width = int(t.embed_dim)
            self.patch = _pair(t.patch_embed.patch_size)
            self.num_prefix = int(t.num_prefix_tokens)
            self.has_cls_token = getattr(t, "cls_token", None) is not None
            self.num_layers = len(t.blocks)
        else:
            self.width, self.patch, self.num_prefix, self.has_cls_token, self.num_layers = self.dim, (0, 0), 0, False, None
        ih, iw = _pair(self.preprocess_cfg.get("size", 224))
        self._input = (ih, iw)
        self._cls_source = self._describe_cls(visual)

    # -- what the model is -------------------------------------------------------
    def _probe_embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        cfg_dim = self.model_cfg.get("embed_dim")
        if cfg_dim is not None:
            return int(cfg_dim)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        raise UnsupportedModelError(f"backbone {self.name!r}: cannot tell the embedding width of {type(self.model).__name__}")

    @staticmethod
    def _visual_kind(visual: Any) -> tuple[str, Any]:
        from open_clip.transformer import VisionTransformer

        if isinstance(visual, VisionTransformer):
            return "vit", None
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and hasattr(trunk, "forward_intermediates") and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
            return "timm_vit", trunk
        return "other", None

    def _describe_cls(self, visual: Any) -> str:
        if self.kind == "vit":
            if getattr(visual, "attn_pool", None) is not None:
                pool = "attentional pooler"
            else:
                pool = {"tok": "class token x[:, 0]", "avg": "mean of patch tokens"}.get(visual.pool_type, visual.pool_type)
            proj = " @ proj" if visual.proj is not None else ""
            return f"encode_image: ln_post({pool}){proj} (projected, not normalised)"
        if self.kind == "timm_vit":
            pool = getattr(self._trunk, "global_pool", "?")
            what = {"map": "MAP attention-pool head (no class token)", "token": "class token", "avg": "mean of patch tokens"}.get(pool, str(pool))
            if pool == "map" and self.has_cls_token:
                what = "MAP attention-pool head"
            head = " -> head" if len(visual.head) else ""
            return f"encode_image: timm trunk {what}{head} (projected, not normalised)"
        return f"encode_image of {type(visual).__name__} (projected, not normalised)"

    # -- preprocessing -------------------------------------------------------------
    def preprocessor(self) -> OpenCLIPPreprocessor:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = PreprocessCfg(**self.preprocess_cfg)
        return OpenCLIPPreprocessor(image_transform_v2(cfg, is_train=False), self.preprocess_cfg)

    def _text_spec(self) -> dict[str, Any]:
        tok = self.tokenizer
        text_cfg = self.model_cfg.get("text_cfg", {})
        return {
            "class": type(tok).__name__,
            "context_length": int(getattr(tok, "context_length", 0) or 0),
            "vocab_sha256": _vocab_digest(tok),
            "config": {k: text_cfg[k] for k in ("hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode") if k in text_cfg},
        }

    def preprocess_spec(self) -> dict[str, Any]:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.preprocess_cfg.items()}
        return {"library": "open_clip", "transform": "image_transform_v2(is_train=False)", "config": cfg, "text": self._text_spec()}

    def feature_dim(self, layers: Sequence[int] | None = None) -> int:
        return self.dim if layers is None else self.width * len(layers)

    def patch_dim(self, layers: Sequence[int] | None = None) -> int:
        return self.width if layers is None else self.width * len(layers)

    def _need_tokens(self, what: str) -> None:
        if self.kind == "other":
            raise UnsupportedModelError(
                f"backbone {self.name!r}: {what} needs a ViT visual tower; this model's is a "
                f"{type(self.model.visual).__name__}. Fix: store its image embedding only (leave out --dense / --layers)."
            )

    def output_spec(self, dense: bool, layers: Sequence[int] | None = None) -> dict[str, Any]:
        if dense:
            self._need_tokens("--dense")
        norm = "ln_post" if self.kind == "vit" else "trunk.norm"
        spec: dict[str, Any] = {
            "architecture": self.model_cfg,
            "cls": self._cls_source,
            "patches": f"last block tokens after {norm}, prefix ({self.num_prefix}) dropped, not projected" if dense else None,
            "normalize": None,
            "compute_dtype": "float32",
        }
        if layers is not None:
            self._need_tokens("--layers")
            glob = "class token" if self.has_cls_token else "mean of patch tokens"
            spec["layer"] = {"blocks": list(layers), "norm": norm}
            spec["cls"] = f"concat over blocks of ({glob}) of the block tokens after {norm}"
            spec["patches"] = f"concat on channels over blocks of tokens after {norm}, prefix dropped" if dense else None
        return spec

    def token_layout(self, layers: Sequence[int] | None = None) -> TokenLayout | None:
        if self.kind == "other":
            return None
        ih, iw = self._input
        cls_source = self._cls_source
        if layers is not None:
            glob = "class token" if self.has_cls_token else "mean of patch tokens"
            cls_source = f"concat of the {glob} of blocks {list(layers)} (not projected)"
        return TokenLayout(
            grid_h=ih // self.patch[0],
            grid_w=iw // self.patch[1],
            patch_size=self.patch[0],
            num_prefix_tokens=self.num_prefix,
            num_register_tokens=max(0, self.num_prefix - (1 if self.has_cls_token else 0)),
            cls_source=cls_source,
            input_h=ih,
            input_w=iw,
        )

    # -- model ---------------------------------------------------------------------
    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        # both towers, logit scale and bias: the hash covers the text tower too
        return self.model.state_dict().items()

    def to(self, device: torch.device) -> "OpenCLIPBackbone":
        self.model.to(device)
        self.device = torch.device(device)
        return self

    def _intermediates(self, pixel_values: torch.Tensor, indices: list[int], final: bool) -> dict[str, Any]:
        return self.model.visual.forward_intermediates(
            pixel_values,
            indices=indices,
            normalize_intermediates=True,
            intermediates_only=not final,
            output_fmt="NLC",
            output_extra_tokens=True,
        )

    def _block_global(self, tokens: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        if self.has_cls_token and prefix is not None:
            return prefix[:, 0]  # (B, W)
        return tokens.mean(dim=1)  # (B, W)

    def forward(self, pixel_values: torch.Tensor, *, dense: bool, layers: Sequence[int] | None = None) -> BackboneOutput:
        b, _, h, w = pixel_values.shape  # (B, C, H, W)
        layout = self.token_layout(layers)
        if layers is None and not dense:
            return BackboneOutput(cls=self.model.encode_image(pixel_values), patches=None, layout=layout)  # (B, D)
        if layers is None:
            out = self._intermediates(pixel_values, [self.num_layers - 1], final=True)
            patches = out["image_intermediates"][0]  # (B, N, W)
            return BackboneOutput(cls=out["image_features"], patches=self._check_grid(patches, h, w), layout=layout)
        out = self._intermediates(pixel_values, list(layers), final=False)
        # open_clip returns blocks in ascending order; put them in the order asked for
        order = {blk: i for i, blk in enumerate(sorted(layers))}
        tokens = [out["image_intermediates"][order[i]] for i in layers]  # each (B, N, W)
        prefixes = out.get("image_intermediates_prefix")
        prefix = [prefixes[order[i]] for i in layers] if prefixes is not None else [None] * len(layers)
        cls = torch.cat([self._block_global(t, p) for t, p in zip(tokens, prefix)], dim=-1)  # (B, W * L)
        patches = self._check_grid(torch.cat(tokens, dim=-1), h, w) if dense else None  # (B, N, W * L)
        return BackboneOutput(cls=cls, patches=patches, layout=layout)

    def _check_grid(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        gh, gw = h // self.patch[0], w // self.patch[1]
        if patches.shape[1] != gh * gw:
            raise UnsupportedModelError(f"{self.name}: {patches.shape[1]} patch tokens for a {gh}x{gw} grid")
        return patches

    # -- text tower ----------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)  # (T, context_length)
        return self.model.encode_text(tokens)  # (T, D)

    def zero_shot_head(self) -> ZeroShotHead:
        bias = getattr(self.model, "logit_bias", None)
        return ZeroShotHead(
            logit_scale=float(self.model.logit_scale.exp().item()),
            logit_bias=float(bias.item()) if bias is not None else 0.0,
            activation="sigmoid" if bias is not None else "softmax",
        )

    def card_info(self) -> dict[str, Any]:
        import open_clip

        versions = {"open_clip_torch": open_clip.__version__}
        try:
            import timm

            versions["timm"] = timm.__version__
        except ImportError:  # pragma: no cover - open_clip's timm towers need it
            pass
        layout = self.token_layout()
        return {
            "plugin": PLUGIN_DIST,
            "plugin_version": metadata.version(PLUGIN_DIST),
            "weights_source": self.source,
            "weights_revision": None,
            "architecture": f"{type(self.model).__name__}({self.model_name})",
            "library_versions": versions,
            "token_layout": layout.model_dump() if layout else None,
        }
