"""Reading checkpoint files without running code stored in them (shared by plugins).

``.safetensors`` is read with safetensors; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` /
``.pth.tar`` only with ``torch.load(weights_only=True)``. A pickle that needs Python
objects other than tensors (and so could run code when unpickled) is refused with
:class:`~featurestore.errors.UnsafeCheckpointError`, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from featurestore.errors import ConfigError, MissingDependencyError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
# keys under which training scripts nest the state dict
WRAPPER_KEYS = ("state_dict", "model")


def convert_hint(path: Path) -> str:
    """How to turn a trusted pickle into safetensors, once."""
    name = path.name
    stem = name[: -len(".pth.tar")] if name.endswith(".pth.tar") else path.stem
    out = path.with_name(stem + ".safetensors")
    return (
        f"Fix: convert it to safetensors once, on a machine where you trust the file: "
        f"python -c \"import torch, safetensors.torch as st; ck = torch.load('{path}', weights_only=False); "
        f"sd = ck.get('state_dict', ck.get('model', ck)); st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{out}')\" "
        f"and pass {out}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, read without running any code stored in it.

    A dict nested under ``state_dict`` / ``model`` is unwrapped, and a ``module.`` prefix
    (DistributedDataParallel) is removed.

    Raises:
        UnsafeCheckpointError: a pickle that needs Python objects other than tensors.
        ConfigError: unknown suffix, unreadable file, or no state dict inside.
    """
    path = Path(path)
    lower = path.name.lower()
    if lower.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise MissingDependencyError("safetensors", f"reading {path}") from exc
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ConfigError(
                f"checkpoint {str(path)!r}: not a readable safetensors file ({type(exc).__name__}: {_first_line(exc)}). "
                f"Fix: re-save it with safetensors.torch.save_file."
            ) from exc
    elif lower.endswith(PICKLE_SUFFIXES):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            lines = str(exc).splitlines()
            detail = next((ln.strip() for ln in lines if "global" in ln.lower()), None)
            if detail is None:  # not a forbidden object: the bytes are no valid pickle at all
                raise ConfigError(
                    f"checkpoint {str(path)!r}: not a readable PyTorch checkpoint (corrupt or not a pickle: "
                    f"{next((ln.strip() for ln in reversed(lines) if ln.strip()), 'UnpicklingError')}). "
                    f"Fix: pass a file written by torch.save(model.state_dict(), ...) or a .safetensors file."
                ) from exc
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {str(path)!r}: the pickle needs Python objects other than tensors "
                f"({detail}), and unpickling those can run arbitrary code. Only torch.load(weights_only=True) is used "
                f"for .pth/.pt/.bin files. {convert_hint(path)}"
            ) from exc
        except Exception as exc:
            raise ConfigError(
                f"checkpoint {str(path)!r}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)}). "
                f"Fix: pass a file written by torch.save(model.state_dict(), ...) or a .safetensors file."
            ) from exc
    else:
        raise ConfigError(
            f"checkpoint {str(path)!r}: unknown checkpoint type {path.suffix!r}. "
            f"Fix: use a file ending in one of {', '.join(CHECKPOINT_SUFFIXES)}."
        )
    return _unwrap(obj, path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not _is_state_dict(obj) and isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(
            f"checkpoint {str(path)!r} holds {what}, not a state dict of tensors (nor one under "
            f"{' / '.join(repr(k) for k in WRAPPER_KEYS)}). Fix: save model.state_dict() itself."
        )
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


__all__ = ["read_state_dict", "convert_hint", "CHECKPOINT_SUFFIXES", "PICKLE_SUFFIXES", "WRAPPER_KEYS"]
