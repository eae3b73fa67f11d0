"""Finding a timm model and its weights.

``--weights`` may be:

* nothing: timm's pretrained weights for the name's tag (or the backbone's default tag),
  downloaded from the hub by ``timm.create_model(..., pretrained=True)``;
* a pretrained tag, ``a1h_in1k`` or ``resnet50.a1h_in1k``: those weights, from the hub;
* a checkpoint file: ``.safetensors`` read with safetensors; ``.pth`` / ``.pt`` / ``.bin`` /
  ``.ckpt`` / ``.pth.tar`` read only with ``torch.load(weights_only=True)``, so a pickle
  that would run code is refused. Preprocessing comes from the tag's pretrained config;
* a directory in timm's export layout (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``: ``timm.models.save_for_hf`` or ``hf download timm/<name>``):
  architecture arguments and preprocessing come from its ``config.json``.

Every model is built with ``num_classes=0``: the classifier never changes the stored
features, so it is neither built nor hashed, and checkpoints with or without one load alike.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featurestore.checkpoints import CHECKPOINT_SUFFIXES
from featurestore.checkpoints import read_state_dict as read_checkpoint
from featurestore.errors import ConfigError, MissingDependencyError, UnsafeCheckpointError, WeightsNotFoundError

# files looked for, in this order, in an export directory
DIR_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
FAMILY = "timm:"


class CheckpointMismatchError(ConfigError):
    """A checkpoint's tensors do not fit the architecture they are loaded into."""


@dataclass
class LoadedModel:
    """A timm model with its weights loaded, and where they came from."""

    model: torch.nn.Module
    arch: str  # timm registry name, e.g. "resnet50"
    data_config: dict[str, Any]  # timm's resolved data config (input_size, mean, std, crop_pct …)
    source: str  # for the model card: "hf-hub:timm/resnet50.a1_in1k", a file or a directory
    revision: str | None = None  # hub commit, when known
    tag: str | None = None  # pretrained tag whose config gave the preprocessing
    # architecture arguments beyond timm's defaults (from an export directory); part of the model hash
    model_args: dict[str, Any] = field(default_factory=dict)
    ignored_keys: list[str] = field(default_factory=list)  # checkpoint keys not loaded (the classifier)


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError("timm", "the featurestore-timm backbones") from exc
    return timm


def close_model_names(arch: str, n: int = 8) -> list[str]:
    """timm model names that look like ``arch`` (edit distance first, then substring)."""
    timm = _timm()
    names = timm.list_models()
    out = difflib.get_close_matches(arch, names, n=n, cutoff=0.6)
    for m in timm.list_models(f"*{arch}*") if arch else []:
        if m not in out:
            out.append(m)
    return out[:n]


def pretrained_tags(arch: str) -> list[str]:
    """Tags of ``arch`` that timm has pretrained weights for."""
    return [m.split(".", 1)[1] for m in _timm().list_pretrained(f"{arch}.*") if "." in m]


def parse_name(name: str) -> tuple[str, str | None]:
    """``"timm:resnet50.a1_in1k"`` / ``"resnet50"`` → ``(architecture, tag or None)``, both checked.

    Raises:
        ConfigError: not a timm model name (the message lists close matches), or an unknown tag.
    """
    timm = _timm()
    rest = name[len(FAMILY) :] if name.startswith(FAMILY) else name
    rest = rest.strip()
    if any(c in rest for c in "/\\:"):
        raise ConfigError(
            f"backbone {name!r}: {rest!r} is not a timm model name (it looks like a path or hub id). "
            f"Fix: name the architecture and pass the weights separately, e.g. "
            f"--backbone timm:resnet50 --weights /path/to/checkpoint.safetensors (or an export directory)."
        )
    arch, _, tag = rest.partition(".")
    if not timm.is_model(arch):
        close = close_model_names(arch)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"backbone {name!r}: timm has no model named {arch!r}.{hint} "
            f"Fix: use a name from timm.list_models(), e.g. --backbone timm:{close[0] if close else 'resnet50'}."
        )
    if tag:
        check_tag(arch, tag, what=f"backbone {name!r}")
    return arch, tag or None


def check_tag(arch: str, tag: str, *, what: str) -> None:
    """Raise ConfigError when ``tag`` is not a pretrained tag of ``arch``."""
    from timm.models import get_pretrained_cfg

    try:
        get_pretrained_cfg(f"{arch}.{tag}")
    except RuntimeError:
        tags = pretrained_tags(arch)
        known = f"tags with weights: {', '.join(tags)}" if tags else "timm has no pretrained weights for it"
        raise ConfigError(
            f"{what}: {tag!r} is not a pretrained tag of {arch!r} ({known}). "
            f"Fix: use one of those tags, or leave the tag out."
        ) from None


def default_tag(arch: str) -> str | None:
    """The tag ``timm.create_model(arch, pretrained=True)`` would load."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return getattr(cfg, "tag", None) if cfg is not None else None


def _looks_like_path(text: str) -> bool:
    return any(c in text for c in "/\\") or text.startswith(("~", ".")) or text.lower().endswith(CHECKPOINT_SUFFIXES + (".json",))


def load_model(name: str, arch: str, tag: str | None, weights: str | None, *, fallback_tag: str | None = None) -> LoadedModel:
    """Build ``arch`` with the weights ``weights`` names (see the module docstring).

    Args:
        name: the backbone name as asked for (for messages).
        arch: timm architecture name.
        tag: pretrained tag from the backbone name, if it had one.
        weights: the ``--weights`` value, or None for the default pretrained weights.
        fallback_tag: the tag to use when neither the name nor ``weights`` gives one.

    Raises:
        WeightsNotFoundError: no such file, or the hub weights could not be fetched.
        UnsafeCheckpointError: a pickle that needs more than tensors.
        CheckpointMismatchError: the checkpoint does not fit ``arch``.
        ConfigError: conflicting tags, unreadable files or configs.
    """
    if weights is None:
        return load_from_hub(name, arch, tag or fallback_tag or default_tag(arch))
    text = weights.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        if tag:
            raise ConfigError(
                f"backbone {name!r} names the tag {tag!r}, but --weights {text!r} is a directory whose config.json "
                f"sets the preprocessing. Fix: drop the tag (--backbone {FAMILY}{arch}) or pass a checkpoint file."
            )
        return load_from_directory(name, arch, path)
    if path.is_file():
        return load_from_file(name, arch, tag or fallback_tag, path)
    if _looks_like_path(text):
        raise WeightsNotFoundError(
            f"--weights {text!r} for backbone {name!r}: no such file or directory ({path.resolve()}). "
            f"Fix: pass an existing checkpoint (.safetensors, .pth, .pt, .bin), a timm export directory, "
            f"or a pretrained tag of {arch!r}."
        )
    wtag = text
    if "." in text:
        warch, _, wtag = text.partition(".")
        if warch != arch:
            raise ConfigError(
                f"--weights {text!r} names pretrained weights of {warch!r}, but backbone {name!r} is a {arch!r}. "
                f"Fix: --backbone {FAMILY}{text}, or a tag of {arch!r}."
            )
    if tag and wtag != tag:
        raise ConfigError(
            f"backbone {name!r} names the tag {tag!r} and --weights names {wtag!r}. Fix: give the tag once."
        )
    if wtag not in pretrained_tags(arch):
        tags = pretrained_tags(arch)
        raise WeightsNotFoundError(
            f"--weights {text!r} for backbone {name!r} is neither an existing file or directory nor a pretrained tag "
            f"of {arch!r} (tags with weights: {', '.join(tags) or 'none'}). Fix: pass a checkpoint file, "
            f"a timm export directory, or one of those tags."
        )
    return load_from_hub(name, arch, wtag)


# -- hub ---------------------------------------------------------------------


def _hub_hint(name: str, full: str, hub_id: str | None) -> str:
    get = f"`hf download {hub_id} --local-dir DIR` on a machine with network and pass --weights DIR" if hub_id else "a copy of the checkpoint"
    return (
        f"Fix: pass local weights with --weights FILE (.safetensors, or .pth/.pt/.bin holding only tensors) "
        f"or --weights DIR (a timm export directory: {get}); e.g. "
        f"featurestore extract IMAGES --backbone {name} --weights /path/to/{full}.safetensors"
    )


def load_from_hub(name: str, arch: str, tag: str | None) -> LoadedModel:
    """``timm.create_model(arch.tag, pretrained=True)``; WeightsNotFoundError when that fails."""
    timm = _timm()
    full = f"{arch}.{tag}" if tag else arch
    if not timm.list_pretrained(full):
        tags = pretrained_tags(arch)
        raise WeightsNotFoundError(
            f"timm has no pretrained weights for {full!r} (backbone {name!r}; tags with weights: "
            f"{', '.join(tags) or 'none'}). {_hub_hint(name, full, None)}"
        )
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(full)
    hub_id = getattr(cfg, "hf_hub_id", None) or None
    from featurestore import hub
    from featurestore_timm.plugin import WEIGHTS_FILE_FIX

    try:
        # hub unreachable: the cache only, no retries (or at once the fix, when not cached)
        with hub.access(name, hub_id, other_fix=WEIGHTS_FILE_FIX):
            model = timm.create_model(full, pretrained=True, num_classes=0)
    except WeightsNotFoundError:
        raise
    except Exception as exc:  # offline, missing cache, HTTP errors: all mean "no weights here"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(". ")
        where = f"hf-hub:{hub_id}" if hub_id else (getattr(cfg, "url", None) or "its download URL")
        raise WeightsNotFoundError(
            f"could not load pretrained weights for timm model {full!r} (backbone {name!r}) from {where}: "
            f"{type(exc).__name__}: {reason}. {_hub_hint(name, full, hub_id)}"
        ) from exc
    source = f"hf-hub:{hub_id}" if hub_id else str(getattr(cfg, "url", "") or full)
    return LoadedModel(
        model=model,
        arch=arch,
        data_config=data_config(model),
        source=source,
        revision=_hub_revision(hub_id) if hub_id else None,
        tag=tag,
    )


def _hub_revision(hub_id: str) -> str | None:
    """The commit of the cached hub snapshot the weights were read from, when it can be told."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, rev = hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        try:
            path = try_to_load_from_cache(repo, filename, revision=rev or None)
        except Exception:  # an odd cache layout is no reason to fail a run
            return None
        if isinstance(path, str):
            m = re.search(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]", path)
            return m.group(1) if m else None
    return None


# -- local files ---------------------------------------------------------------


def data_config(model: torch.nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm's eval data config for ``model`` (or for ``pretrained_cfg``), JSON-canonical."""
    from timm.data import resolve_data_config

    if pretrained_cfg is not None:
        cfg = resolve_data_config({}, pretrained_cfg=pretrained_cfg)
    else:
        cfg = resolve_data_config({}, model=model)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(cfg.items())}


def load_from_file(name: str, arch: str, tag: str | None, path: Path) -> LoadedModel:
    """Build ``arch`` (preprocessing from ``tag``'s pretrained config) and load a checkpoint file into it."""
    timm = _timm()
    model = timm.create_model(f"{arch}.{tag}" if tag else arch, pretrained=False, num_classes=0)
    state = read_checkpoint(path)
    ignored = load_strict(model, state, path, arch)
    return LoadedModel(
        model=model,
        arch=arch,
        data_config=data_config(model),
        source=str(path.resolve()),
        tag=tag or default_tag(arch),
        ignored_keys=ignored,
    )


def load_from_directory(name: str, arch: str, path: Path) -> LoadedModel:
    """A timm export directory: ``config.json`` (architecture, model_args, pretrained_cfg) + weights."""
    timm = _timm()
    path = path.resolve()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise WeightsNotFoundError(
            f"--weights {str(path)!r} for backbone {name!r}: no config.json in that directory. Fix: pass the "
            f"checkpoint file itself (--weights {path}/<file>.safetensors), or a timm export directory "
            f"(written by timm.models.save_for_hf, or `hf download timm/<model>.<tag> --local-dir DIR`)."
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{cfg_file}: not readable JSON ({exc}). Fix: re-export the model with timm.models.save_for_hf.") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise ConfigError(f"{cfg_file} has no 'architecture' string, so it is not a timm model config. Fix: re-export with timm.models.save_for_hf.")
    if "pretrained_cfg" in cfg:
        pcfg = dict(cfg["pretrained_cfg"] or {})
    else:  # the older flat layout: the pretrained config at the top level
        pcfg = {k: v for k, v in cfg.items() if k not in ("architecture", "num_features", "model_args")}
    dir_arch = cfg["architecture"].partition(".")[0]
    if dir_arch != arch:
        raise ConfigError(
            f"--weights {str(path)!r} holds a {dir_arch!r} (its config.json says so), but backbone {name!r} is a "
            f"{arch!r}. Fix: --backbone {FAMILY}{dir_arch} --weights {path}"
        )
    weights_file = next((path / f for f in DIR_WEIGHT_FILES if (path / f).is_file()), None)
    if weights_file is None:
        raise WeightsNotFoundError(
            f"--weights {str(path)!r} for backbone {name!r}: config.json but no weights file "
            f"(looked for {', '.join(DIR_WEIGHT_FILES)}). Fix: put the checkpoint there under one of those names."
        )
    model_args = {k: v for k, v in (cfg.get("model_args") or {}).items() if k != "num_classes"}
    try:
        model = timm.create_model(arch, pretrained=False, **{**model_args, "num_classes": 0})
    except Exception as exc:
        raise ConfigError(
            f"{cfg_file}: timm could not build {arch!r} with model_args {model_args}: {type(exc).__name__}: {exc}. "
            f"Fix: correct model_args in config.json (or re-export with timm.models.save_for_hf)."
        ) from exc
    state = read_checkpoint(weights_file)
    ignored = load_strict(model, state, weights_file, arch)
    merged = {**model.pretrained_cfg, **pcfg}
    return LoadedModel(
        model=model,
        arch=arch,
        data_config=data_config(model, merged),
        source=str(path),
        tag=None,
        model_args=model_args,
        ignored_keys=ignored,
    )


def _classifier_names(model: torch.nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> list[str]:
    """Load every tensor of ``model`` from ``state``; the classifier's keys are the only ones ignored.

    Returns:
        The checkpoint keys that were ignored (the classifier, which is not built).

    Raises:
        CheckpointMismatchError: missing or unexpected keys, or shapes that differ.
    """
    expected = model.state_dict()
    heads = _classifier_names(model)
    ignored = sorted(k for k in state if k not in expected and any(k == h or k.startswith(h + ".") for h in heads))
    state = {k: v for k, v in state.items() if k not in ignored}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" … ({len(items)} in all)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {few(shapes)}")
        raise CheckpointMismatchError(
            f"--weights {str(path)!r} does not fit timm model {arch!r} ({'; '.join(parts)}). Fix: name the "
            f"architecture the checkpoint was trained as (--backbone {FAMILY}<name>), or pass a checkpoint of {arch!r}."
        )
    model.load_state_dict(state, strict=True)
    return ignored


__all__ = [
    "CheckpointMismatchError",
    "LoadedModel",
    "UnsafeCheckpointError",
    "close_model_names",
    "load_model",
    "parse_name",
    "read_checkpoint",
]
