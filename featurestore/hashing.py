"""Model hashes and content ids.

``weights_sha256`` = SHA-256 over every tensor in name order: its name, dtype, shape and
raw bytes (length-prefixed, so no two different inputs serialise alike).
``model_hash`` = SHA-256 over ``weights_sha256`` and the canonical JSON of the
preprocessing, output spec and decode policy. Not ``repr()``, not a path, not a mtime:
the same tensors from ``.bin``, ``.safetensors`` or another directory give the same hash.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # torch only where tensors are hashed: the catalog commands never load it
    import torch

HASH_VERSION = "featurestore-model-hash/1"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON-able in a hashed spec: {type(obj).__name__} {obj!r}")


def _field(h: "hashlib._Hash", data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def weights_sha256(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order.

    Raises:
        ValueError: when two tensors share a name.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for name, t in named_tensors:
        if name in tensors:
            raise ValueError(f"two tensors named {name!r}; names must be unique to hash a model")
        tensors[name] = t
    h = hashlib.sha256()
    _field(h, HASH_VERSION.encode())
    for name in sorted(tensors):
        t = tensors[name].detach()
        _field(h, name.encode())
        _field(h, str(t.dtype).removeprefix("torch.").encode())
        _field(h, json.dumps(list(t.shape)).encode())
        t = t.to("cpu").contiguous()
        # A uint8 view reads the raw bytes of any dtype (bf16 has no numpy dtype).
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        h.update(struct.pack("<Q", t.numel() * t.element_size()))
        h.update(memoryview(raw))
    return h.hexdigest()


def model_hash(weights_digest: str, spec: dict[str, Any]) -> str:
    """Combine a weights digest with the canonical JSON of the preprocessing/output spec."""
    h = hashlib.sha256()
    _field(h, HASH_VERSION.encode())
    _field(h, weights_digest.encode())
    _field(h, canonical_json(spec).encode())
    return h.hexdigest()


def content_id(data: bytes) -> str:
    """Row id of a source: SHA-256 of its bytes, so one image under two paths is one row."""
    return hashlib.sha256(data).hexdigest()
