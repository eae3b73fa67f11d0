"""Determinism and state round trips: what the core's adapter hash and artifacts rely on."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from featurestore.errors import ConfigError
from featurestore_adapters.plugin import create

#: (name, params) of every adapter variant with its own state layout or arithmetic
VARIANTS = [
    ("pca-whiten", {}),
    ("pca-whiten", {"dim": 8, "eps": 1e-3}),
    ("project", {"dim": 8}),
    ("quantize", {}),
    ("quantize", {"method": "pq", "m": 16, "iters": 5}),
    ("linear-head", {"max_iter": 40}),
    ("linear-head", {"dim": 4, "max_iter": 40}),
]


def fitted(name, params, data):
    (x, y), _ = data
    a = create(name, **params)
    metrics = a.fit(x, y, list("abcde")) if a.needs_labels else a.fit(x)
    return a, metrics


@pytest.fixture(scope="module")
def data(blob_data):
    """64-d blob rows with labels (300+ rows, enough for pq's 256 centres)."""
    return blob_data


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=[f"{n}{p}" for n, p in VARIANTS])
def test_fitting_twice_gives_byte_identical_state(name, params, data):
    a, ma = fitted(name, params, data)
    b, mb = fitted(name, params, data)
    sa, sb = a.state(), b.state()
    assert sorted(sa) == sorted(sb) and sa
    for key in sa:
        assert sa[key].dtype == np.float32 and sa[key].flags.c_contiguous
        assert sa[key].tobytes() == sb[key].tobytes(), key
    assert ma == mb
    # another seed changes the fit of the seeded ones
    if "seed" in a.params() and (name != "quantize" or params.get("method") == "pq"):
        c = create(name, **{**params, "seed": 7})
        c.fit(data[0][0], data[0][1], list("abcde")) if c.needs_labels else c.fit(data[0][0])
        assert any(c.state()[k].tobytes() != sa[k].tobytes() for k in sa)


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=[f"{n}{p}" for n, p in VARIANTS])
def test_state_round_trips_through_safetensors(name, params, data, tmp_path):
    a, _ = fitted(name, params, data)
    path = tmp_path / "state.safetensors"
    save_file(a.state(), str(path))
    b = create(name, **params)  # how the core rebuilds it: same name and params, then the tensors
    b.load_state(load_file(str(path)))
    x = data[1][0]  # held-out rows
    assert (b.in_dim(), b.out_dim(), b.out_dtype()) == (a.in_dim(), a.out_dim(), a.out_dtype())
    ya, yb = a.transform(x), b.transform(x)
    assert ya.dtype == np.dtype(a.out_dtype()) and ya.shape == (len(x), a.out_dim())
    assert ya.tobytes() == yb.tobytes()
    if a.invertible:
        assert a.decode(ya).tobytes() == b.decode(yb).tobytes()
    assert b.spec() == a.spec()


def test_state_is_a_copy(rows16):
    a = create("project", dim=3)
    a.fit(rows16)
    before = a.transform(rows16)
    a.state()["components"][:] = 0
    assert np.array_equal(a.transform(rows16), before)


def test_params_are_canonical_in_the_spec():
    assert create("project", dim=8.0).spec() == create("project", dim=8).spec() == {"name": "project", "params": {"dim": 8}, "version": 1}
    assert create("pca-whiten", eps=-0.0).params() == {"dim": None, "eps": 0.0}
    assert str(create("pca-whiten", eps=-0.0).params()["eps"]) == "0.0"  # one spelling of zero, one hash
    assert create("quantize", method=" PQ ").params()["method"] == "pq"
    assert create("quantize", method="int8", m=0, seed=0).params() == create("quantize").params()


def test_load_state_refuses_tensors_that_are_not_its_state(rows16):
    a = create("pca-whiten", dim=4)
    a.fit(rows16)
    st = a.state()
    with pytest.raises(ConfigError, match=r"missing \['scale'\]"):
        create("pca-whiten", dim=4).load_state({k: v for k, v in st.items() if k != "scale"})
    with pytest.raises(ConfigError, match=r"unexpected \['extra'\]"):
        create("pca-whiten", dim=4).load_state({**st, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ConfigError, match="'mean' is float64"):
        create("pca-whiten", dim=4).load_state({**st, "mean": st["mean"].astype(np.float64)})
    with pytest.raises(ConfigError, match="keeps 4 axes but dim=5"):
        create("pca-whiten", dim=5).load_state(st)
    with pytest.raises(ConfigError, match="load it as pca-whiten"):
        create("project", dim=4).load_state(st)
    q = create("quantize")
    q.fit(rows16)
    with pytest.raises(ConfigError, match=r"missing \['centroids'\]"):
        create("quantize", method="pq").load_state(q.state())
    nan = {**st, "mean": np.full(16, np.nan, np.float32)}
    with pytest.raises(ConfigError, match="finite"):
        create("pca-whiten", dim=4).load_state(nan)
