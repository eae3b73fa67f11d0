"""Building an open_clip model from a name and ``--weights``, loading checkpoints safely.

Model names are what ``open_clip.create_model`` accepts: a built-in architecture
(``ViT-B-32``), ``hf-hub:org/repo`` or ``local-dir:/path`` (``open_clip_config.json`` plus
weights). ``weights`` is a pretrained tag of a built-in architecture (``openai``,
``laion2b_s34b_b79k``, ``webli`` …) or a checkpoint file.

Checkpoint files are read by :mod:`featurestore.checkpoints`: safetensors, or
``torch.load(weights_only=True)``; a pickle that would run code is refused, never executed.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from featurestore.checkpoints import CHECKPOINT_SUFFIXES as SAFE_SUFFIXES
from featurestore.checkpoints import read_state_dict
from featurestore.errors import ConfigError, MissingDependencyError, UnsafeCheckpointError, UnsupportedModelError, WeightsNotFoundError

CHECKPOINT_SUFFIXES = (*SAFE_SUFFIXES, ".npz")
# preferred weight files inside a local-dir, safetensors first
DIR_CHECKPOINTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "pytorch_model.bin",
)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise MissingDependencyError("open_clip_torch", "open_clip backbones") from exc
    return open_clip


def split_schema(model_name: str) -> tuple[str | None, str]:
    for schema in ("hf-hub:", "local-dir:"):
        if model_name.startswith(schema):
            return schema[:-1], model_name[len(schema) :]
    return None, model_name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model_config(name: str, model_name: str) -> dict[str, Any]:
    """The architecture config (``model_cfg``) of an open_clip model name."""
    oc = _open_clip()
    schema, ident = split_schema(model_name)
    if schema == "local-dir":
        path = Path(ident).expanduser()
        cfg_file = path / "open_clip_config.json"
        if not cfg_file.is_file():
            raise WeightsNotFoundError(
                f"backbone {name!r}: {'no open_clip_config.json in ' + str(path) if path.is_dir() else 'no such directory: ' + str(path)}. "
                f"Fix: point local-dir: at a directory with open_clip_config.json and open_clip_model.safetensors "
                f"(e.g. from `hf download <org/repo> --local-dir DIR` for an open_clip hub model)."
            )
        try:
            data = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"backbone {name!r}: cannot read {cfg_file}: {_first_line(exc)}. Fix: repair the JSON.") from exc
        if "model_cfg" not in data:
            raise ConfigError(f"backbone {name!r}: {cfg_file} has no 'model_cfg'. Fix: use an open_clip config file.")
        return data["model_cfg"]
    if schema == "hf-hub":
        try:
            cfg = oc.get_model_config(model_name)
        except Exception as exc:
            raise WeightsNotFoundError(
                f"backbone {name!r}: could not fetch open_clip_config.json of {ident!r} from the hub: {_first_line(exc)}. "
                f"Fix: download the repo on a machine with network (`hf download {ident} --local-dir DIR`) and use "
                f"open_clip:local-dir:DIR, or fill the HF_HOME cache."
            ) from exc
        if not cfg:
            raise WeightsNotFoundError(f"backbone {name!r}: hub repo {ident!r} has no open_clip model config")
        return cfg
    cfg = oc.get_model_config(ident)
    if cfg is None:
        import difflib

        close = difflib.get_close_matches(ident, oc.list_models(), n=5, cutoff=0.5)
        raise UnsupportedModelError(
            f"backbone {name!r}: {ident!r} is not an open_clip architecture"
            + (f"; did you mean {', '.join(close)}?" if close else ".")
            + " Fix: see open_clip.list_models(), or use open_clip:hf-hub:<org/repo> / open_clip:local-dir:<dir>."
        )
    return cfg


def read_checkpoint(path: Path, name: str) -> dict[str, Any] | None:
    """Read a checkpoint file safely before any model is built (None: a big_vision ``.npz``)."""
    if not path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise UnsupportedModelError(
            f"backbone {name!r}: checkpoint {path} has suffix {path.suffix!r}; supported: {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    return None if path.suffix == ".npz" else read_state_dict(path)  # safetensors or weights_only pickles


def load_into(model: Any, path: Path, state_dict: dict[str, Any] | None, name: str) -> None:
    """Load a checkpoint read by :func:`read_checkpoint` into ``model`` strictly, with open_clip's key conversions."""
    import open_clip.factory as of

    if state_dict is None:  # big_vision (SigLIP) numpy weights: np.load without pickles
        of.load_checkpoint(model, str(path))
        return
    # the same massaging open_clip.load_checkpoint does, on a dict we read safely ourselves
    state_dict = of.convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = of.convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state_dict and param is not None and param.ndim != state_dict[key].ndim:
            state_dict[key] = state_dict[key].reshape(param.shape)
    of.resize_pos_embed(state_dict, model)
    of.resize_text_pos_embed(state_dict, model)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UnsupportedModelError(
            f"backbone {name!r}: checkpoint {path} does not fit the architecture: {_first_line(exc)}. "
            f"Fix: pass the architecture the checkpoint was trained with (open_clip:<architecture> --weights FILE)."
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise UnsupportedModelError(
            f"backbone {name!r}: checkpoint {path} does not fit the architecture: "
            f"missing {result.missing_keys[:8]}{'…' if len(result.missing_keys) > 8 else ''}, "
            f"unexpected {result.unexpected_keys[:8]}{'…' if len(result.unexpected_keys) > 8 else ''}. "
            f"Fix: pass the architecture the checkpoint was trained with (open_clip:<architecture> --weights FILE)."
        )


def _find_dir_checkpoint(path: Path) -> Path | None:
    for fname in DIR_CHECKPOINTS:
        if (path / fname).is_file():
            return path / fname
    found = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
    return found[0] if found else None


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip warns "initialized randomly" when we load the weights ourselves right after."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def build_model(name: str, model_name: str, weights: str | None) -> tuple[Any, dict[str, Any], str, Any]:
    """Create the model and load its weights.

    Returns:
        ``(model, model_cfg, weights_source, tokenizer)``; model in eval mode on CPU.
    """
    oc = _open_clip()
    schema, ident = split_schema(model_name)
    model_cfg = load_model_config(name, model_name)
    file = Path(weights).expanduser() if weights and (Path(weights).expanduser().exists() or "/" in weights or weights.lower().endswith(CHECKPOINT_SUFFIXES)) else None
    if file is not None and not file.is_file():
        raise WeightsNotFoundError(
            f"backbone {name!r}: checkpoint file {str(file)!r} does not exist. Fix: pass an existing .safetensors / .bin / .pth file, or a pretrained tag."
        )
    kwargs: dict[str, Any] = {}
    if schema is None:
        if weights is None:
            tags = oc.list_pretrained_tags_by_model(ident)
            raise WeightsNotFoundError(
                f"backbone {name!r} needs weights: pass --weights with a pretrained tag"
                + (f" ({', '.join(tags[:8])}{'…' if len(tags) > 8 else ''})" if tags else "")
                + " or a checkpoint file (.safetensors preferred)."
            )
        if file is None:
            tag_cfg = oc.get_pretrained_cfg(ident, weights)
            if not tag_cfg:
                tags = oc.list_pretrained_tags_by_model(ident)
                raise WeightsNotFoundError(
                    f"backbone {name!r}: {weights!r} is neither a checkpoint file nor a pretrained tag of {ident}"
                    + (f"; tags: {', '.join(tags)}" if tags else "")
                    + ". Fix: pass an existing file path or one of the tags."
                )
            if tag_cfg.get("hf_hub"):  # offline or hub unreachable, and not cached: the fix, now
                from featurestore import hub

                hub.check(name, tag_cfg["hf_hub"].strip("/"))
            # OpenAI weights were trained with QuickGELU; the plain architecture config uses GELU
            if tag_cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
                model_cfg = {**model_cfg, "quick_gelu": True}
    try:
        if schema is None and file is None:
            model = oc.create_model(ident, pretrained=weights, **kwargs)
            source = f"{ident} pretrained={weights}"
        elif file is not None or schema == "local-dir":
            if file is None:
                file = _find_dir_checkpoint(Path(ident).expanduser())
                if file is None:
                    raise WeightsNotFoundError(
                        f"backbone {name!r}: no weights in {ident} (looked for {', '.join(DIR_CHECKPOINTS[:3])} …). "
                        f"Fix: put open_clip_model.safetensors next to open_clip_config.json."
                    )
            state_dict = read_checkpoint(file, name)  # refuse unsafe files before building anything
            with _quiet_open_clip():
                model = oc.create_model(model_name, load_weights=False) if schema else oc.create_model(ident, **kwargs)
            load_into(model, file, state_dict, name)
            source = str(file.resolve())
        else:  # hf-hub with its own weights
            model = oc.create_model(model_name)
            source = model_name
    except (WeightsNotFoundError, UnsupportedModelError, ConfigError, UnsafeCheckpointError):
        raise
    except Exception as exc:
        raise WeightsNotFoundError(
            f"could not load weights for backbone {name!r} ({model_name}, weights={weights!r}): {_first_line(exc)}. "
            f"Fix: pass --weights FILE with a local checkpoint (.safetensors), use open_clip:local-dir:DIR, "
            f"or make the hub reachable / fill the HF_HOME cache."
        ) from exc
    try:
        tokenizer = oc.get_tokenizer(model_name)
    except Exception as exc:
        raise WeightsNotFoundError(
            f"backbone {name!r}: could not load the tokenizer of {model_name}: {_first_line(exc)}. "
            f"Fix: make the hub reachable or fill the HF_HOME cache (text tokenizers are downloaded once)."
        ) from exc
    return model.eval(), model_cfg, source, tokenizer


def load_backbone(name: str, model_name: str, weights: str | None):
    """Build the :class:`~featurestore_openclip.backbone.OpenCLIPBackbone` for ``model_name``."""
    from featurestore_openclip.backbone import OpenCLIPBackbone

    if not model_name:
        raise ConfigError(f"backbone {name!r} names no model. Fix: open_clip:<architecture>, open_clip:hf-hub:<org/repo> or open_clip:local-dir:<dir>.")
    from featurestore import hub

    with hub.access(name):  # hub unreachable: the cache only, no retries
        model, model_cfg, source, tokenizer = build_model(name, model_name, weights)
    return OpenCLIPBackbone(name, model_name, source, model, model_cfg, tokenizer)
