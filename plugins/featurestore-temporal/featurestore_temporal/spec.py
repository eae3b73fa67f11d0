"""Aggregator parameters (declared, checked, made canonical) and the ``NAME:key=value`` syntax.

This module imports no numpy: the plugin's entry point module reads the parameter
defaults from here when it registers the aggregators, and the core loads every entry
point module for commands as light as ``featurestore plugins``.

A parameter's value is hashed into the clip table's key (through
:meth:`featurestore.aggregator.Aggregator.spec`), so values are made canonical here:
``proportion=0``, ``proportion=0.0`` and ``proportion=-0.0`` all become ``0.0`` and
name one clip table, while ``0.1`` and ``0.2`` name two.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featurestore.errors import ConfigError


@dataclass(frozen=True)
class NumberParam:
    """A real-number parameter: its default and the interval it accepts.

    Attributes:
        default: the value used when the parameter is not given (already canonical).
        low: smallest accepted value, inclusive.
        high: the upper bound, excluded when ``high_open`` is true.
        high_open: whether ``high`` itself is refused.
        doc: what the parameter does, in a few words, for error messages.
    """

    default: float
    low: float
    high: float
    high_open: bool
    doc: str

    def accepted(self, key: str) -> str:
        """The accepted range as an inequality, e.g. ``0 <= proportion < 0.5``."""
        return f"{self.low:g} <= {key} {'<' if self.high_open else '<='} {self.high:g}"

    def describe(self, key: str) -> str:
        """One line for error messages: name, range, default and meaning."""
        return f"{key}: a number, {self.accepted(key)}, default {self.default:g} ({self.doc})"

    def check(self, aggregator: str, key: str, value: Any) -> float:
        """Return ``value`` as a canonical float, or raise naming the aggregator, key and range.

        Raises:
            ConfigError: ``value`` is not a real number (``bool`` included: ``true`` is a
                typo, not 1) or lies outside the accepted range (NaN included).
        """
        fix = f"Fix: e.g. {aggregator}:{key}={self.default:g}."
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f"aggregator {aggregator!r}: {key}={value!r} is a {type(value).__name__}, not a number; "
                f"it accepts {self.accepted(key)} ({self.doc}). {fix}"
            )
        v = float(value)
        # Written as a positive test so that NaN (every comparison false) is refused too.
        inside = self.low <= v and (v < self.high if self.high_open else v <= self.high)
        if not inside:
            raise ConfigError(
                f"aggregator {aggregator!r}: {key}={value!r} is out of range; "
                f"it accepts {self.accepted(key)} ({self.doc}). {fix}"
            )
        return v + 0.0  # -0.0 + 0.0 == +0.0: one spelling of zero, so one spec hash


#: Parameters of each aggregator this plugin registers (name -> parameter -> declaration).
PARAMS: dict[str, dict[str, NumberParam]] = {
    "mean": {},
    "max": {},
    "meanmax": {},
    "trimmed-mean": {
        "proportion": NumberParam(
            default=0.1,
            low=0.0,
            high=0.5,
            high_open=True,
            doc="fraction of the T frame values cut from each end, per dimension: int(proportion * T) each side",
        )
    },
    "motion": {},
}


def defaults(aggregator: str) -> dict[str, float]:
    """The default parameters of ``aggregator`` (what ``featurestore aggregators`` shows)."""
    return {key: p.default for key, p in sorted(PARAMS[aggregator].items())}


def check_params(aggregator: str, given: Mapping[str, Any], declared: Mapping[str, NumberParam]) -> dict[str, Any]:
    """Validate ``given`` against ``declared`` and return the canonical parameters.

    Args:
        aggregator: the aggregator's name, for error messages.
        given: the parameters as passed to the factory (``NAME:key=value`` parsed).
        declared: the parameters the aggregator accepts.

    Returns:
        Every declared parameter, sorted by name, with defaults filled in and values
        made canonical, so equal arithmetic always gives an equal (hashed) spec.

    Raises:
        ConfigError: a parameter the aggregator does not take, or a bad value.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        key = unknown[0]
        if not declared:
            raise ConfigError(
                f"aggregator {aggregator!r} takes no parameters, got {key}={given[key]!r}. Fix: write just {aggregator!r}."
            )
        close = difflib.get_close_matches(str(key), list(declared), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        accepts = "; ".join(p.describe(k) for k, p in sorted(declared.items()))
        example = ",".join(f"{k}={p.default:g}" for k, p in sorted(declared.items()))
        raise ConfigError(
            f"aggregator {aggregator!r} has no parameter {key!r}{hint}. It accepts {accepts}. "
            f"Fix: e.g. {aggregator}:{example}."
        )
    return {key: (p.check(aggregator, key, given[key]) if key in given else p.default) for key, p in sorted(declared.items())}


def parse_aggregator(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:key=value,…]`` → ``(name, params)``: the core's parser
    (:func:`featurestore.clips.parse_aggregator`), imported lazily so this module stays light."""
    from featurestore.clips import parse_aggregator as core_parse

    return core_parse(text)


__all__ = ["PARAMS", "NumberParam", "check_params", "defaults", "parse_aggregator"]
