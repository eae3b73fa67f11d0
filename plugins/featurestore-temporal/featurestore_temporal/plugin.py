"""Entry point module (``[project.entry-points.featurestore] temporal = ...``).

Loaded every time the core builds its plugin host, so it imports nothing heavy: the
parameter defaults come from the numpy-free :mod:`featurestore_temporal.spec`, and numpy
with the arithmetic is imported by the factory, when an aggregator is actually built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featurestore import hookimpl
from featurestore_temporal.spec import defaults

if TYPE_CHECKING:
    from featurestore.hookspecs import RegisterFn
    from featurestore_temporal.aggregators import TemporalAggregator

#: name -> what ``featurestore aggregators`` shows; D is the frame feature width. No square
#: brackets: the core prints these through rich, which would take "[mean, max]" for markup.
SUMMARIES: dict[str, str] = {
    "mean": "temporal mean (D)",
    "max": "element-wise temporal maximum (D)",
    "meanmax": "mean, then max, concatenated (2D)",
    "trimmed-mean": "per-element mean without the int(proportion*T) lowest and highest values, as scipy.stats.trim_mean (D)",
    "motion": "mean |x(t+1) - x(t)|, then the mean, concatenated (2D; the motion half is 0 for one frame)",
}


def create(name: str, **params: Any) -> TemporalAggregator:
    """Factory the core calls as ``factory(name, **params)`` (``NAME:key=value`` parsed)."""
    from featurestore_temporal.aggregators import create_aggregator

    return create_aggregator(name, **params)


@hookimpl
def register_aggregators(register: RegisterFn) -> None:
    """Register ``mean``, ``max``, ``meanmax``, ``trimmed-mean`` and ``motion``.

    Every one aggregates patch tokens too (per position over time), hence ``patches=True``;
    ``params`` holds the defaults, the same values the factory fills in.
    """
    for name, summary in SUMMARIES.items():
        register(name, create, summary=summary, patches=True, params=defaults(name))
