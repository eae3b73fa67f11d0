"""Bad parameters and bad inputs are ConfigErrors that name the value and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.errors import ConfigError
from featurestore_adapters.plugin import create


def test_unknown_and_missing_parameters():
    with pytest.raises(ConfigError) as err:
        create("project", dim=4, dims=3)
    msg = str(err.value)
    assert "no parameter 'dims'" in msg and "did you mean 'dim'" in msg and "Fix: e.g. project:dim=64" in msg
    with pytest.raises(ConfigError, match="adapter 'quantize' has no parameter 'bits'.*It accepts iters"):
        create("quantize", bits=8)
    with pytest.raises(ConfigError, match=r"'project' needs the parameter 'dim'.*Fix: e.g. project:dim=64"):
        create("project")


@pytest.mark.parametrize(
    ("name", "params", "expect"),
    [
        ("project", {"dim": 0}, "dim=0 is out of range; dim takes an integer >= 1"),
        ("project", {"dim": "oops"}, "dim=oops is a str, not an integer >= 1"),
        ("project", {"dim": True}, "dim=true is a bool"),
        ("project", {"dim": 2.5}, "dim=2.5 is not a whole number"),
        ("project", {"dim": None}, "dim=null is null"),
        ("pca-whiten", {"eps": -1}, "eps=-1 is out of range; eps takes a number >= 0"),
        ("pca-whiten", {"eps": float("nan")}, "eps=nan is not finite"),
        ("pca-whiten", {"dim": float("inf")}, "dim=inf is not finite"),
        ("quantize", {"method": "fp16"}, "method=fp16 is not one of int8, pq"),
        ("quantize", {"method": "pq", "iters": 0}, "iters=0 is out of range; iters takes an integer in 1..1000"),
        ("quantize", {"method": "pq", "m": -2}, "m=-2 is out of range"),
        ("quantize", {"m": 8}, "m=8 only applies to method=pq, and method is int8"),
        ("quantize", {"seed": 3, "iters": 5}, "iters=5, seed=3 only applies to method=pq"),
        ("linear-head", {"l2": -0.1}, "l2=-0.1 is out of range"),
        ("linear-head", {"standardize": "yes"}, "standardize=yes is not true or false"),
        ("linear-head", {"seed": -1}, "seed=-1 is out of range"),
        ("linear-head", {"max_iter": 0}, "max_iter=0 is out of range"),
    ],
)
def test_bad_values_name_the_value_and_the_fix(name, params, expect):
    with pytest.raises(ConfigError) as err:
        create(name, **params)
    msg = str(err.value)
    assert expect in msg and f"adapter {name!r}" in msg and "Fix:" in msg


def test_using_an_unfitted_adapter_says_fit_it_first(rows16):
    for a in (create("pca-whiten"), create("project", dim=2), create("quantize"), create("linear-head")):
        for call in (lambda a=a: a.transform(rows16), a.in_dim, a.out_dim, a.state):
            with pytest.raises(ConfigError, match="is not fitted.*Fix: fit it first"):
                call()
        if a.invertible:
            with pytest.raises(ConfigError, match="fit it first"):
                a.decode(np.zeros((1, 2), np.int8))


def test_wrong_widths_name_both_widths(rows16):
    for a in (create("pca-whiten", dim=4), create("quantize"), create("quantize", method="pq", m=4)):
        a.fit(rows16)
        with pytest.raises(ConfigError, match=r"takes 16-wide rows \(the width it was fitted on\), got 12-wide rows \(3, 12\)"):
            a.transform(rows16[:3, :12])
        with pytest.raises(ConfigError, match=rf"decode takes {a.out_dim()}-wide rows .*got {a.out_dim() + 1}-wide"):
            a.decode(np.zeros((2, a.out_dim() + 1), a.out_dtype()))
    with pytest.raises(ConfigError, match=r"an \(n, 16\) array of numbers, got float32\(16,\).*x\[None\]"):
        a.transform(rows16[0])


def test_too_few_fit_rows_say_how_many_are_needed(rows16):
    with pytest.raises(ConfigError, match=r"keeping dim=8 principal axes needs at least 9 fit rows, got 5\. Fix: fit on more rows, or project:dim=4"):
        create("project", dim=8).fit(rows16[:5])
    with pytest.raises(ConfigError, match="keeping dim=16 principal axes needs at least 17 fit rows, got 10"):
        create("pca-whiten").fit(rows16[:10])
    with pytest.raises(ConfigError, match=r"dim=20 is more than the width of the fit rows, D=16\. Fix: project:dim=<1\.\.16>"):
        create("project", dim=20).fit(rows16)
    with pytest.raises(ConfigError, match=r"fits 256 centres per sub-vector and needs at least 256 fit rows, got 255\. Fix: .*quantize:method=int8"):
        create("quantize", method="pq", m=2).fit(np.vstack([rows16] * 2)[:255])
    with pytest.raises(ConfigError, match=r"needs at least 2 fit rows, got 1"):
        create("quantize").fit(rows16[:1])
    with pytest.raises(ConfigError, match=r"m=5 sub-vectors do not divide D=16 evenly\. Fix: quantize:method=pq,m=<a divisor of 16: 1, 2, 4, 8, 16>"):
        create("quantize", method="pq", m=5).fit(rows16)
    with pytest.raises(ConfigError, match=r"m=0 \(auto\) means D/8 sub-vectors, but D=12 is not a multiple of 8.*1, 2, 3, 4, 6, 12"):
        create("quantize", method="pq").fit(rows16[:, :12])


def test_nan_inf_and_degenerate_fit_rows(rows16):
    x = rows16.copy()
    x[7, 3] = np.nan
    x[9, 0] = np.inf
    x[9, 1] = -np.inf
    for a in (create("pca-whiten"), create("project", dim=2), create("quantize"), create("linear-head")):
        with pytest.raises(ConfigError, match=r"hold 3 NaN or inf values, in 2 of 400 rows \(first: row 7\)\. Fix: leave those rows out"):
            a.fit(x, np.arange(400) % 2, None)
    with pytest.raises(ConfigError, match=r"non-empty \(n, D\) array of numbers, got float32\(16,\)"):
        create("pca-whiten").fit(rows16[0])
    with pytest.raises(ConfigError, match="all 50 fit rows are the same vector"):
        create("project", dim=2).fit(np.ones((50, 4), np.float32))
    rank1 = np.random.default_rng(0).standard_normal((100, 1)).astype(np.float32) * np.ones((1, 6), np.float32)  # rows c·(1, …, 1)
    with pytest.raises(ConfigError, match=r"5 of the 6 kept axes have zero variance \(the fit rows span 1 dimensions\).*Fix: pca-whiten:eps=1e-6, or dim=1"):
        create("pca-whiten", eps=0).fit(rank1)
    a = create("pca-whiten", eps=0, dim=1)  # the fix works
    a.fit(rank1)
    np.testing.assert_allclose(np.var(a.transform(rank1), ddof=1), 1.0, rtol=1e-5)


def test_bad_labels_for_linear_head(rows16):
    a = create("linear-head")
    with pytest.raises(ConfigError, match="trained on class labels and got none. Fix: pass labels"):
        a.fit(rows16)
    with pytest.raises(ConfigError, match=r"labels must be 400 integer class indices.*got int64\(399,\)"):
        a.fit(rows16, np.zeros(399, np.int64))
    with pytest.raises(ConfigError, match=r"got float64\(400,\)"):
        a.fit(rows16, np.zeros(400))
    with pytest.raises(ConfigError, match=r"labels range 0\.\.3, outside the 3 classes \['a', 'b', 'c'\]"):
        a.fit(rows16, np.arange(400) % 4, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="carry 1 class; a classifier needs at least 2"):
        a.fit(rows16, np.zeros(400, np.int64), ["a", "b"])


def test_codes_in_and_out_are_checked(rows16):
    q = create("quantize")
    q.fit(rows16)
    bad = rows16[:4].copy()
    bad[2, 5] = np.nan
    with pytest.raises(ConfigError, match="row 2 of the input holds NaN or inf, which has no code"):
        q.transform(bad)
    with pytest.raises(ConfigError, match=r"integer codes in -128\.\.127 \(int8\), got float32"):
        q.decode(rows16[:2])
    p = create("quantize", method="pq", m=4)
    p.fit(rows16)
    with pytest.raises(ConfigError, match=r"integer codes in 0\.\.255 \(uint8\), got int64 values 0\.\.300"):
        p.decode(np.array([[0, 1, 2, 300]]))
