"""Parsing and resolving ``--layers``."""

from __future__ import annotations

import pytest

from featurestore.errors import ConfigError, UnsupportedModelError
from featurestore.layers import parse_layers, resolve_layers


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, None),
        ("-1", [-1]),
        (" -4,-3, -2,-1 ", [-4, -3, -2, -1]),
        ("last4", [-4, -3, -2, -1]),
        ("LAST2", [-2, -1]),
        ("0,5,11", [0, 5, 11]),
        ([3, -1], [3, -1]),
        ((7,), [7]),
    ],
)
def test_parse(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize("spec", ["", " , ", "last0", "a,b", "1.5", [], [1.0], [True], ["1"]])
def test_parse_rejects(spec):
    with pytest.raises(ConfigError):
        parse_layers(spec)


def test_resolve_maps_negative_to_absolute_and_keeps_order():
    assert resolve_layers([-4, -3, -2, -1], 12, "m") == (8, 9, 10, 11)
    assert resolve_layers([11, 0], 12, "m") == (11, 0)
    assert resolve_layers(None, 12, "m") is None
    assert resolve_layers(None, None, "m") is None


@pytest.mark.parametrize("layers, needle", [([12], "has 12 blocks"), ([-13], "has 12 blocks"), ([11, -1], "named twice")])
def test_resolve_rejects(layers, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_layers(layers, 12, "m")


def test_backbone_without_layers_is_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="'resnet_like'.*leave out --layers"):
        resolve_layers([-1], None, "resnet_like")
