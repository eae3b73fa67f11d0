"""Adapter parameters: declared once, checked, made canonical.

This module imports no numpy: the entry point module reads the defaults from here when it
registers the adapters, and the core loads every entry point module even for commands as
light as ``featurestore plugins``.

The factories receive parameters as the core parsed them from ``NAME:key=value`` (JSON
literals: ints, floats, strings, booleans, ``null``). A parameter's value is hashed into
the adapter hash through :meth:`featurestore.adapter.Adapter.spec`, so values are made
canonical here: ``dim=64`` and ``dim=64.0`` name one adapter, ``eps=0`` and ``eps=-0.0``
too.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featurestore.errors import ConfigError

#: the marker a required parameter's default shows in the registry listing
REQUIRED = None


@dataclass(frozen=True)
class Param:
    """One parameter: its kind, default, accepted values and meaning.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"`` or ``"choice"``.
        default: the canonical value used when the parameter is not given.
        doc: what the parameter does, in a few words, for listings and error messages.
        low: smallest accepted number (inclusive), for ``int`` and ``float``.
        high: largest accepted number (inclusive), ``None`` for no bound.
        nullable: whether ``null`` is accepted (its meaning is in ``doc``).
        choices: the accepted strings of a ``choice`` parameter.
        required: the parameter has no default and must be given.
        example: a value to suggest in a "Fix:" when the given one is refused.
    """

    kind: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()
    required: bool = False
    example: Any = None

    def accepted(self) -> str:
        """What the parameter accepts, in words: ``an integer >= 1, or null``."""
        if self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "bool":
            text = "true or false"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None:
                text += f" in {self.low:g}..{self.high:g}"
            elif self.low is not None:
                text += f" >= {self.low:g}"
        return text + (", or null" if self.nullable else "")

    def describe(self, key: str) -> str:
        """One line for error messages: name, accepted values, default and meaning."""
        default = "required" if self.required else f"default {_json(self.default)}"
        return f"{key}: {self.accepted()}, {default} ({self.doc})"

    def check(self, adapter: str, key: str, value: Any) -> Any:
        """Return ``value`` made canonical, or raise naming the adapter, key and what is accepted.

        Raises:
            ConfigError: a value of the wrong type or out of range (NaN and inf included).
        """
        example = self.example if self.example is not None else self.default
        fix = f"Fix: e.g. {adapter}:{key}={_json(example)}."
        bad = f"adapter {adapter!r}: {key}={_json(value)} "
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(bad + f"is null; {key} takes {self.accepted()} ({self.doc}). {fix}")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise ConfigError(bad + f"is not true or false ({self.doc}). {fix}")
        if self.kind == "choice":
            text = value.strip().lower() if isinstance(value, str) else None
            if text in self.choices:
                return text
            raise ConfigError(bad + f"is not {self.accepted()} ({self.doc}). {fix}")
        # numbers: bool is an int to Python, but "dim=true" is a typo, not 1
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(bad + f"is a {type(value).__name__}, not {self.accepted()} ({self.doc}). {fix}")
        v = float(value)
        if not math.isfinite(v):
            raise ConfigError(bad + f"is not finite; {key} takes {self.accepted()} ({self.doc}). {fix}")
        if self.kind == "int":
            if v != int(v):
                raise ConfigError(bad + f"is not a whole number; {key} takes {self.accepted()} ({self.doc}). {fix}")
            out: float | int = int(v)
        else:
            out = v + 0.0  # -0.0 + 0.0 == +0.0: one spelling of zero, so one spec hash
        # written as positive tests so that nothing slips through a NaN comparison
        inside = (self.low is None or out >= self.low) and (self.high is None or out <= self.high)
        if not inside:
            raise ConfigError(bad + f"is out of range; {key} takes {self.accepted()} ({self.doc}). {fix}")
        return out


def _json(value: Any) -> str:
    """A value as the user would write it after ``key=`` (``null``, ``true``, ``64``, ``pq``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


#: Parameters of each adapter this plugin registers (name -> parameter -> declaration).
PARAMS: dict[str, dict[str, Param]] = {
    "pca-whiten": {
        "dim": Param("int", None, "principal axes kept; null keeps all D", low=1, nullable=True, example=128),
        "eps": Param("float", 1e-6, "added to every eigenvalue, times the largest one, so tiny ones are not blown up", low=0.0),
    },
    "project": {
        "dim": Param("int", REQUIRED, "principal axes kept: the output width", low=1, required=True, example=64),
    },
    "quantize": {
        "method": Param("choice", "int8", "int8: one int8 code per dimension; pq: product quantization", choices=("int8", "pq")),
        "m": Param("int", 0, "pq sub-vectors, one uint8 code each; must divide D; 0 means D/8", low=0, example=48),
        "iters": Param("int", 20, "pq k-means (Lloyd) iterations per sub-vector", low=1, high=1000),
        "seed": Param("int", 0, "pq k-means++ seed", low=0, high=2**32 - 1),
    },
    "linear-head": {
        "dim": Param("int", None, "null: output the class logits; an integer: a dim-wide linear bottleneck before them", low=1, nullable=True, example=64),
        "l2": Param("float", 1e-4, "L2 penalty on the weights", low=0.0),
        "max_iter": Param("int", 200, "L-BFGS iterations (full batch)", low=1, high=100_000),
        "seed": Param("int", 0, "seed of the initial weights", low=0, high=2**32 - 1),
        "standardize": Param("bool", True, "standardize every input dimension with the fit rows' mean and std first"),
    },
}

#: parameters that only change the arithmetic of ``quantize:method=pq``
PQ_ONLY = ("m", "iters", "seed")


def defaults(adapter: str) -> dict[str, Any]:
    """Default parameters of ``adapter``, sorted by name; a required one shows ``None``."""
    return {key: p.default for key, p in sorted(PARAMS[adapter].items())}


def required(adapter: str) -> list[str]:
    """Names of the parameters ``adapter`` cannot be built without."""
    return sorted(key for key, p in PARAMS[adapter].items() if p.required)


def check_params(adapter: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``given`` against ``adapter``'s declaration and return canonical parameters.

    Args:
        adapter: a registered adapter name (a key of :data:`PARAMS`).
        given: the parameters as passed to the factory.

    Returns:
        Every declared parameter, sorted by name, defaults filled in and values canonical,
        so equal arithmetic always gives an equal (hashed) spec.

    Raises:
        ConfigError: an unknown parameter, a missing required one, a bad value, or pq-only
            parameters given to ``quantize:method=int8``.
    """
    declared = PARAMS[adapter]
    example = ",".join(f"{k}={_json(p.example if p.example is not None else p.default)}" for k, p in sorted(declared.items()))
    unknown = sorted(set(given) - set(declared), key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(declared), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        accepts = "; ".join(p.describe(k) for k, p in sorted(declared.items()))
        raise ConfigError(
            f"adapter {adapter!r} has no parameter {key!r}{hint}. It accepts {accepts}. Fix: e.g. {adapter}:{example}."
        )
    for key in required(adapter):
        if key not in given:
            raise ConfigError(
                f"adapter {adapter!r} needs the parameter {key!r} ({declared[key].doc}). "
                f"Fix: e.g. {adapter}:{key}={_json(declared[key].example)}."
            )
    out = {key: (p.check(adapter, key, given[key]) if key in given else p.default) for key, p in sorted(declared.items())}
    if adapter == "quantize" and out["method"] == "int8":
        # the int8 arithmetic ignores them: refuse instead of hashing a spec that changes nothing
        odd = [k for k in PQ_ONLY if out[k] != declared[k].default]
        if odd:
            listed = ", ".join(f"{k}={_json(out[k])}" for k in odd)
            raise ConfigError(
                f"adapter 'quantize': {listed} only applies to method=pq, and method is int8. "
                f"Fix: quantize:method=pq,{listed} for product quantization, or drop {', '.join(odd)}."
            )
    return out


__all__ = ["PARAMS", "PQ_ONLY", "Param", "check_params", "defaults", "required"]
