"""``--layers``: which blocks' outputs to store.

Users write block indices the Python way (``-1`` is the last block) or ``lastN``; the
core resolves them against the backbone's :attr:`~featurestore.backbone.Backbone.num_layers`
to absolute indices, so ``-4,-3,-2,-1`` and ``8,9,10,11`` on a 12-block model are the same
output spec, the same model hash and the same table.
"""

from __future__ import annotations

import re
from typing import Sequence

from featurestore.errors import ConfigError, UnsupportedModelError

_LAST = re.compile(r"^last(\d+)$")


def parse_layers(spec: str | Sequence[int] | None) -> list[int] | None:
    """``"-4,-3,-2,-1"`` / ``"last4"`` / ``[10, 11]`` → a list of (possibly negative) ints."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        out = []
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"layers must be integers, got {v!r} in {list(spec)!r}. Fix: e.g. layers=[-4, -3, -2, -1].")
            out.append(v)
        if not out:
            raise ConfigError("layers is empty. Fix: leave it out for the default output, or name blocks, e.g. -1 or last4.")
        return out
    text = spec.strip().lower()
    m = _LAST.match(text)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ConfigError(f"--layers {spec!r}: lastN needs N >= 1, e.g. last4.")
        return list(range(-n, 0))
    try:
        out = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--layers {spec!r} is not a list of block indices. Fix: comma-separated integers "
            f"(negative counts from the last block), e.g. --layers -4,-3,-2,-1, or --layers last4."
        ) from None
    if not out:
        raise ConfigError(f"--layers {spec!r} names no block. Fix: e.g. --layers -1 or --layers last4.")
    return out


def resolve_layers(layers: Sequence[int] | None, num_layers: int | None, backbone: str) -> tuple[int, ...] | None:
    """Absolute, validated block indices (order kept) for a backbone with ``num_layers`` blocks."""
    if layers is None:
        return None
    if num_layers is None:
        raise UnsupportedModelError(
            f"backbone {backbone!r} cannot output intermediate layers. Fix: leave out --layers."
        )
    out = []
    for i in layers:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ConfigError(
                f"--layers: block {i} does not exist in {backbone!r}, which has {num_layers} blocks "
                f"(0..{num_layers - 1}, or -{num_layers}..-1)."
            )
        if j in out:
            raise ConfigError(f"--layers: block {i} is named twice (as block {j}) for {backbone!r}. Fix: name each block once.")
        out.append(j)
    return tuple(out)


__all__ = ["parse_layers", "resolve_layers"]
