"""Each aggregator's cls and patch outputs against independent references, shapes, dtypes, bits.

The references are written differently from the plugin on purpose: running sums over the
frames, ``functools.reduce(np.maximum, …)``, and for ``trimmed-mean`` Python's ``sorted``
per column (plus ``scipy.stats.trim_mean`` where scipy is installed).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import numpy as np
import pytest

from featurestore.errors import ConfigError
from featurestore_temporal.aggregators import AGGREGATORS, create_aggregator

NAMES = sorted(AGGREGATORS)


# -- references, one frame at a time ------------------------------------------------------


def ref_mean(x: np.ndarray) -> np.ndarray:
    total = np.zeros(x.shape[1:])
    for frame in x:
        total = total + frame
    return total / len(x)


def ref_max(x: np.ndarray) -> np.ndarray:
    return functools.reduce(np.maximum, list(x))


def ref_motion(x: np.ndarray) -> np.ndarray:
    steps = [np.abs(x[t + 1] - x[t]) for t in range(len(x) - 1)]
    moved = sum(steps) / len(steps) if steps else np.zeros(x.shape[1:])
    return np.concatenate([moved, ref_mean(x)], axis=-1)


def ref_trimmed(x: np.ndarray, proportion: float) -> np.ndarray:
    t = len(x)
    k = int(proportion * t)
    cols = x.reshape(t, -1).T.tolist()
    return np.array([statistics.fmean(sorted(col)[k : t - k]) for col in cols]).reshape(x.shape[1:])


REFERENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": ref_mean,
    "max": ref_max,
    "meanmax": lambda x: np.concatenate([ref_mean(x), ref_max(x)], axis=-1),
    "trimmed-mean": lambda x: ref_trimmed(x, 0.1),
    "motion": ref_motion,
}


def per_position(ref: Callable[[np.ndarray], np.ndarray], patches: np.ndarray) -> np.ndarray:
    """(T, N, P) → (N, ·): the cls reference applied to each token position's (T, P) series."""
    return np.stack([ref(patches[:, n, :]) for n in range(patches.shape[1])])


def frames(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_close32(out: np.ndarray, ref: np.ndarray) -> None:
    """float32 output vs a float64 reference: within float32 rounding of the exact value."""
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=3e-7, atol=3e-7)


# -- every aggregator vs its reference --------------------------------------------------------


def test_the_references_cover_exactly_the_registered_names():
    assert sorted(REFERENCES) == NAMES == ["max", "mean", "meanmax", "motion", "trimmed-mean"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 3, 4, 7, 10, 11, 32])
def test_cls_matches_the_reference(name, t):
    x = frames((t, 24), seed=t)
    agg = create_aggregator(name)
    out = agg.aggregate(x)
    assert out.shape == (agg.cls_dim(24),)
    assert_close32(out, REFERENCES[name](x.astype(np.float64)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 5, 10, 13])
def test_patches_match_the_reference_per_position(name, t):
    x = frames((t, 9, 6), seed=100 + t)  # (T, N, P)
    agg = create_aggregator(name)
    out = agg.aggregate_patches(x)
    assert out.shape == (9, agg.patch_dim(6))
    assert_close32(out, per_position(REFERENCES[name], x.astype(np.float64)))


@pytest.mark.parametrize("proportion", [0.0, 0.1, 0.2, 0.25, 1 / 3, 0.45, 0.49])
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 8, 9, 10, 11, 20, 21])
def test_trimmed_mean_odd_and_even_t(proportion, t):
    x = frames((t, 12), seed=t)
    agg = create_aggregator("trimmed-mean", proportion=proportion)
    assert_close32(agg.aggregate(x), ref_trimmed(x.astype(np.float64), proportion))
    p = frames((t, 4, 5), seed=50 + t)
    assert_close32(agg.aggregate_patches(p), per_position(lambda s: ref_trimmed(s, proportion), p.astype(np.float64)))


@pytest.mark.parametrize("proportion", [0.0, 0.1, 0.2, 0.29, 0.3, 0.49])
@pytest.mark.parametrize("t", [1, 2, 3, 9, 10, 11, 100])
def test_trimmed_mean_matches_scipy(proportion, t):
    stats = pytest.importorskip("scipy.stats")
    x = frames((t, 16), seed=t)
    out = create_aggregator("trimmed-mean", proportion=proportion).aggregate(x)
    assert_close32(out, stats.trim_mean(x.astype(np.float64), proportion, axis=0))


def test_trimmed_mean_cuts_int_of_proportion_times_t_from_each_end():
    """By hand: truncation as scipy does, never rounding, and each column cut on its own."""
    x = np.array([[1.0, 100.0], [100.0, 2.0], [2.0, 3.0], [3.0, 1.0], [4.0, 4.0]], np.float32)  # (5, 2)
    cut_one = create_aggregator("trimmed-mean", proportion=0.2).aggregate(x)  # int(0.2 * 5) = 1
    np.testing.assert_array_equal(cut_one, np.array([3.0, 3.0], np.float32))  # mean(2, 3, 4) per column
    cut_none = create_aggregator("trimmed-mean", proportion=0.19).aggregate(x)  # int(0.95) = 0
    np.testing.assert_array_equal(cut_none, np.array([22.0, 22.0], np.float32))
    # 0.29 * 100 == 28.999999999999996 in floating point: scipy cuts 28, not 29
    squares = np.random.default_rng(0).permutation(np.arange(100.0) ** 2)[:, None]  # (100, 1), shuffled
    out = create_aggregator("trimmed-mean", proportion=0.29).aggregate(squares)
    assert out[0] == np.float32(statistics.fmean(float(v * v) for v in range(28, 72)))


def test_small_hand_computed_examples():
    x = np.array([[1.0, 5.0], [3.0, -1.0]], np.float32)  # (T=2, D=2)
    np.testing.assert_array_equal(create_aggregator("meanmax").aggregate(x), [2.0, 2.0, 3.0, 5.0])  # mean, then max
    x = np.array([[0.0], [2.0], [1.0]], np.float32)  # steps +2, -1
    # absolute steps: (2 + 1) / 2 = 1.5 (signed steps would telescope to 0.5), then the mean 1.0
    np.testing.assert_array_equal(create_aggregator("motion").aggregate(x), [1.5, 1.0])


@pytest.mark.parametrize("name", NAMES)
def test_one_frame(name):
    x = frames((1, 7), seed=1)
    out = create_aggregator(name).aggregate(x)
    expect = {
        "mean": x[0],
        "max": x[0],
        "trimmed-mean": x[0],
        "meanmax": np.concatenate([x[0], x[0]]),
        "motion": np.concatenate([np.zeros(7, np.float32), x[0]]),  # no step: the motion half is zeros
    }[name]
    np.testing.assert_array_equal(out, expect)


# -- dtype, shape, determinism -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_widths_and_float32_contiguous_outputs(name):
    parts = 2 if name in ("meanmax", "motion") else 1
    agg = create_aggregator(name)
    assert (agg.cls_dim(384), agg.patch_dim(64)) == (parts * 384, parts * 64)
    assert agg.cls_dim(np.int64(5)) == parts * 5  # widths read from arrays are numpy ints
    for data, shape in ((np.ones((3, 5), np.float64), (parts * 5,)), (np.ones((3, 4, 5), np.float16), (4, parts * 5))):
        out = agg.aggregate(data) if data.ndim == 2 else agg.aggregate_patches(data)
        assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous


@pytest.mark.parametrize("name", NAMES)
def test_bits_do_not_depend_on_call_instance_dtype_or_layout(name):
    x = frames((11, 6, 10), seed=7)  # (T, N, P)
    variants = [x, x.astype(np.float64), np.asfortranarray(x), np.repeat(x, 2, axis=1)[:, ::2, :], x.copy()]
    a, b = create_aggregator(name), create_aggregator(name)
    outs = [agg.aggregate_patches(v) for v in variants for agg in (a, b)]
    outs += [a.aggregate_patches(x)]  # the same instance again
    for out in outs[1:]:
        assert out.tobytes() == outs[0].tobytes()
    cls = x[:, 0, :]  # (T, P), a strided view
    assert a.aggregate(cls).tobytes() == b.aggregate(np.ascontiguousarray(cls, np.float64)).tobytes()
    ints = np.arange(30).reshape(5, 6) % 7  # integer features with the same values as their float copy
    assert a.aggregate(ints).tobytes() == a.aggregate(ints.astype(np.float32)).tobytes()


@pytest.mark.parametrize(("spec", "pick"), [("mean", 0), ("meanmax", 0), ("motion", 1), ("trimmed-mean:0.0", 0), ("trimmed-mean:0.2", 0)])
def test_sums_are_float64(spec, pick):
    """1e8 + 1 == 1e8 in float32: a float32 accumulator would return 0 here, not 1/3."""
    name, _, p = spec.partition(":")
    agg = create_aggregator(name, **({"proportion": float(p)} if p else {}))
    vals = [1e8, 1.0, -1e8] if name != "trimmed-mean" or p == "0.0" else [1e8, 1.0, -3e8, -1e8, 3e8]  # 0.2 cuts ±3e8
    x = np.array(vals, np.float32)[:, None]  # (T, 1); every value exact in float32
    out = agg.aggregate(x)
    assert out[pick] == np.float32(1 / 3)


def test_trimmed_mean_without_a_cut_is_the_mean_bit_for_bit():
    x = frames((9, 33), seed=9)  # int(0.1 * 9) == 0
    assert create_aggregator("trimmed-mean").aggregate(x).tobytes() == create_aggregator("mean").aggregate(x).tobytes()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros(4, np.float32), r"expected a 2-D array \(T frames, D dims\), got shape \(4,\)\. A single frame is \(1, …\)"),
        (np.zeros((2, 3, 4), np.float32), r"expected a 2-D array .* got shape \(2, 3, 4\)"),
        (np.zeros((0, 4), np.float32), r"got 0 frames \(shape \(0, 4\)\); a clip needs at least one frame"),
        (np.zeros((3, 0), np.float32), r"shape \(3, 0\) has no dims"),
        (np.zeros((2, 2), bool), r"must be real numbers, got dtype bool"),
        (np.zeros((2, 2), complex), r"must be real numbers, got dtype complex128"),
        (np.array([["a", "b"]]), r"must be real numbers, got dtype <U1"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_cls_input_is_a_clear_error(name, data, match):
    with pytest.raises(ConfigError, match=match) as info:
        create_aggregator(name).aggregate(data)
    assert f"aggregator {name!r}" in str(info.value) and "Fix:" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((2, 3), np.float32), r"expected a 3-D array \(T frames, N positions, P dims\), got shape \(2, 3\)"),
        (np.zeros((0, 2, 3), np.float32), r"got 0 frames"),
        (np.zeros((2, 0, 3), np.float32), r"has no positions"),
        (np.zeros((2, 3, 0), np.float32), r"has no dims"),
    ],
)
def test_bad_patch_input_is_a_clear_error(data, match):
    for name in NAMES:
        with pytest.raises(ConfigError, match=match):
            create_aggregator(name).aggregate_patches(data)


@pytest.mark.parametrize("dim", [0, -3, True, 2.5, "384", None])
def test_bad_widths_are_refused(dim):
    agg = create_aggregator("meanmax")
    for fn in (agg.cls_dim, agg.patch_dim):
        with pytest.raises(ConfigError, match=r"aggregator 'meanmax': (patch )?dim .*(not an integer|at least 1)"):
            fn(dim)
