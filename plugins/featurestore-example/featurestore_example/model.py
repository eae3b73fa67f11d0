"""PatchNet: a tiny Vision Transformer in plain torch (no model library).

A 64x64 RGB image is cut into an 8x8 grid of 8x8-pixel patches by a strided
convolution; a learned CLS token and learned position embeddings are added; two
pre-norm transformer blocks and a final LayerNorm follow. Token 0 of the output is the
CLS token, tokens 1..64 are the patches in row-major order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PatchNetConfig:
    """Hyperparameters of PatchNet.

    Tensor shapes follow from some of them (and so are covered by the weights hash);
    ``heads`` and ``ln_eps`` are not visible in any tensor, which is why the backbone
    puts :meth:`as_dict` into its (hashed) output spec.
    """

    image_size: int = 64  # input side in pixels; the position embeddings fix it
    patch_size: int = 8  # pixels per patch side (the conv's kernel and stride)
    dim: int = 64  # token width D
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads; dim must be divisible by it
    mlp_dim: int = 128  # hidden width of each block's MLP
    ln_eps: float = 1e-6  # LayerNorm epsilon

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for the model card and the hashed output spec."""
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); exact (erf) GELU."""

    def __init__(self, cfg: PatchNetConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, D)
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
        attn = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D/H)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))  # (B, T, D)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, T, D)


class PatchNet(nn.Module):
    """The whole model; :meth:`forward` returns every token after the final LayerNorm."""

    def __init__(self, cfg: PatchNetConfig | None = None):
        super().__init__()
        self.config = cfg or PatchNetConfig()
        c = self.config
        self.patch_embed = nn.Conv2d(3, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.grid * c.grid, c.dim))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.ln_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, 1 + grid*grid, D)`` of ``pixel_values`` ``(B, 3, image_size, image_size)``.

        Raises:
            ValueError: the input is not ``(B, 3, image_size, image_size)``; the learned
                position embeddings only fit that size.
        """
        s = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"PatchNet takes (B, 3, {s}, {s}) pixel values, got {tuple(pixel_values.shape)}. "
                f"Fix: preprocess with the backbone's own preprocessor."
            )
        x = self.patch_embed(pixel_values)  # (B, D, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, D), row-major
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + grid*grid, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, 1 + grid*grid, D)
