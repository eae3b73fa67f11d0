"""Parameters: checking, canonical specs, the ``NAME:key=value`` parser, errors that name the fix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from featurestore.errors import ConfigError
from featurestore.hashing import canonical_json
from featurestore.plugins import get_host
from featurestore_temporal.aggregators import AGGREGATORS, create_aggregator
from featurestore_temporal.spec import parse_aggregator

NAMES = sorted(AGGREGATORS)
NO_PARAMS = [n for n in NAMES if n != "trimmed-mean"]
RANGE = "0 <= proportion < 0.5"


# -- parameter checking ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NO_PARAMS)
def test_aggregators_without_parameters_refuse_any(name):
    with pytest.raises(ConfigError, match=rf"aggregator '{name}' takes no parameters, got proportion=0\.2\. Fix: write just '{name}'"):
        create_aggregator(name, proportion=0.2)


def test_unknown_parameter_names_the_accepted_one():
    with pytest.raises(ConfigError) as info:
        create_aggregator("trimmed-mean", proportoin=0.2)
    msg = str(info.value)
    assert "aggregator 'trimmed-mean' has no parameter 'proportoin' (did you mean 'proportion'?)" in msg
    assert f"proportion: a number, {RANGE}, default 0.1" in msg and "Fix: e.g. trimmed-mean:proportion=0.1" in msg
    with pytest.raises(ConfigError, match=r"has no parameter 'window'\. It accepts proportion"):  # nothing close: no guess
        create_aggregator("trimmed-mean", window=3)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-0.1, "is out of range"),
        (0.5, "is out of range"),
        (0.7, "is out of range"),
        (1, "is out of range"),
        (math.nan, "is out of range"),
        (math.inf, "is out of range"),
        ("0.2", "is a str, not a number"),
        (True, "is a bool, not a number"),
        (None, "is a NoneType, not a number"),
        ([0.1], "is a list, not a number"),
    ],
)
def test_bad_proportion_names_aggregator_param_and_range(value, why):
    with pytest.raises(ConfigError) as info:
        create_aggregator("trimmed-mean", proportion=value)
    msg = str(info.value)
    assert msg.startswith(f"aggregator 'trimmed-mean': proportion={value!r} {why}")
    assert f"it accepts {RANGE}" in msg and "Fix: e.g. trimmed-mean:proportion=0.1." in msg
    assert isinstance(info.value, ValueError)


def test_the_registered_factory_checks_too():
    """The path the core takes: registry entry → factory(name, **params)."""
    entry = get_host().aggregators.get("trimmed-mean")
    with pytest.raises(ConfigError, match=RANGE):
        entry.factory("trimmed-mean", proportion=0.5)
    assert entry.factory("trimmed-mean", proportion=0.49).params() == {"proportion": 0.49}


def test_unknown_aggregator_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"no aggregator 'median'; it provides max, mean, meanmax, motion, trimmed-mean"):
        create_aggregator("median")


# -- canonical specs -------------------------------------------------------------------------


def test_defaults_are_filled_in():
    assert create_aggregator("trimmed-mean").spec() == {"name": "trimmed-mean", "params": {"proportion": 0.1}, "version": 1}
    for name in NO_PARAMS:
        assert create_aggregator(name).spec() == {"name": name, "params": {}, "version": 1}


@pytest.mark.parametrize("same", [0, 0.0, -0.0, np.float64(0.0), np.int64(0)])
def test_one_value_one_spec(same):
    """Equal arithmetic must hash to one clip table: ints, numpy scalars and -0.0 are canonicalised."""
    spec = create_aggregator("trimmed-mean", proportion=same).spec()
    assert canonical_json(spec) == '{"name":"trimmed-mean","params":{"proportion":0.0},"version":1}'
    assert type(spec["params"]["proportion"]) is float
    explicit = create_aggregator("trimmed-mean", proportion=0.1).spec()
    assert canonical_json(explicit) == canonical_json(create_aggregator("trimmed-mean").spec())


def test_different_params_or_names_give_different_specs():
    specs = [create_aggregator(n).spec() for n in NAMES]
    specs += [create_aggregator("trimmed-mean", proportion=p).spec() for p in (0.0, 0.2, 0.25)]
    texts = [canonical_json(s) for s in specs]
    assert len(set(texts)) == len(texts) == len(NAMES) + 3
    assert all(json.loads(t) == s for t, s in zip(texts, specs))  # JSON round trip: hashable as is


def test_params_returns_a_copy():
    agg = create_aggregator("trimmed-mean", proportion=0.2)
    agg.params()["proportion"] = 0.4
    assert agg.spec()["params"] == {"proportion": 0.2}
    assert repr(agg) == "TrimmedMean(proportion=0.2)"


# -- NAME:key=value -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mean", ("mean", {})),
        ("  meanmax  ", ("meanmax", {})),
        ("mean:", ("mean", {})),
        ("trimmed-mean:proportion=0.2", ("trimmed-mean", {"proportion": 0.2})),
        ("trimmed-mean: proportion = 0 ,", ("trimmed-mean", {"proportion": 0})),
        ('x:a=1,b=true,c=abc,d="q",e=null,f=-2.5e-1', ("x", {"a": 1, "b": True, "c": "abc", "d": "q", "e": None, "f": -0.25})),
    ],
)
def test_parse(text, expected):
    assert parse_aggregator(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"aggregator '' has no name"),
        ("  :proportion=0.2", r"has no name\. Fix: e\.g\. mean, meanmax or trimmed-mean:proportion=0\.2"),
        ("trimmed-mean:proportion", r"parameter 'proportion' is not key=value"),
        ("trimmed-mean:=0.2", r"parameter '=0\.2' is not key=value"),
        ("trimmed-mean:proportion=", r"parameter 'proportion' has no value after '='"),
        ("trimmed-mean:proportion=0.1,proportion=0.2", r"gives 'proportion' twice"),
        (0.2, r"aggregator 0\.2 is a float, not text"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_aggregator(text)


def build(text: str):
    name, params = parse_aggregator(text)
    return create_aggregator(name, **params)


def test_parse_then_build():
    agg = build("trimmed-mean:proportion=0.25")
    assert agg.spec() == {"name": "trimmed-mean", "params": {"proportion": 0.25}, "version": 1}
    with pytest.raises(ConfigError, match=r"proportion='abc' is a str, not a number"):
        build("trimmed-mean:proportion=abc")
    with pytest.raises(ConfigError, match=r"proportion=nan is out of range"):  # JSON's NaN parses, then is refused
        build("trimmed-mean:proportion=NaN")
