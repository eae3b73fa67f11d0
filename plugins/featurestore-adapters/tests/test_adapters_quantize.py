"""quantize: int8 scalar codes and product-quantization codes, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore_adapters.plugin import create


def rel_error(x: np.ndarray, rec: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.square(x - rec).sum() / np.square(x - x.mean(axis=0)).sum())


def test_int8_codes_decode_within_half_a_step(rows16):
    a = create("quantize")
    metrics = a.fit(rows16)
    assert (a.out_dtype(), a.in_dim(), a.out_dim()) == ("int8", 16, 16)
    st = a.state()
    lo, hi = rows16.min(axis=0), rows16.max(axis=0)
    np.testing.assert_array_equal(st["lo"], lo)
    np.testing.assert_allclose(st["scale"], (hi.astype(np.float64) - lo) / 255, rtol=1e-6)
    codes = a.transform(rows16)
    assert codes.dtype == np.int8 and codes.shape == (400, 16)
    # every dimension's minimum row gets -128 and its maximum row 127: the whole range is used
    assert (codes.min(axis=0) == -128).all() and (codes.max(axis=0) == 127).all()
    want = np.clip(np.rint((rows16.astype(np.float64) - lo) / st["scale"]), 0, 255) - 128
    np.testing.assert_array_equal(codes, want)
    dec = a.decode(codes)
    assert dec.dtype == np.float32
    assert (np.abs(dec - rows16) <= st["scale"] / 2 + 1e-5).all()
    assert metrics["relative_reconstruction_error"] == pytest.approx(rel_error(rows16, dec), rel=1e-9)
    assert 0 < metrics["relative_reconstruction_error"] < 1e-4
    assert metrics["clipped_fraction"] == 0.0 and metrics["bytes_per_vector"] == 16 and metrics["n_fit"] == 400


def test_int8_clips_outside_the_fit_range_and_keeps_constant_dims():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (300, 4)).astype(np.float32)
    x[:, 2] = 0.25  # constant on the fit rows
    a = create("quantize")
    metrics = a.fit(x)
    assert metrics["constant_dims"] == 1
    far = np.array([[5.0, -5.0, 0.25, 0.0]], np.float32)
    codes = a.transform(far)
    assert codes[0, 0] == 127 and codes[0, 1] == -128 and codes[0, 2] == -128
    dec = a.decode(codes)[0]
    assert dec[0] == pytest.approx(x[:, 0].max(), abs=1e-6) and dec[1] == pytest.approx(x[:, 1].min(), abs=1e-6)
    assert dec[2] == np.float32(0.25)  # a constant dimension decodes to its constant exactly
    assert (a.decode(a.transform(x))[:, 2] == np.float32(0.25)).all()


def test_pq_codes_are_nearest_centroids_and_decode_to_them(clustered):
    a = create("quantize", method="pq", m=8)
    metrics = a.fit(clustered)
    assert (a.out_dtype(), a.in_dim(), a.out_dim()) == ("uint8", 96, 8)
    cent = a.state()["centroids"]
    assert cent.shape == (8, 256, 12) and cent.dtype == np.float32
    codes = a.transform(clustered)
    assert codes.dtype == np.uint8 and codes.shape == (1024, 8)
    sub = clustered[:256].reshape(256, 8, 12).astype(np.float64)
    dist = np.square(sub[:, :, None, :] - cent[None].astype(np.float64)).sum(-1)  # (256, m, 256) brute force
    best = dist.min(axis=2)
    chosen = np.take_along_axis(dist, codes[:256, :, None].astype(np.intp), axis=2)[..., 0]
    np.testing.assert_allclose(chosen, best, rtol=1e-9, atol=1e-9)  # ties aside, the argmin
    dec = a.decode(codes)
    np.testing.assert_array_equal(dec.reshape(1024, 8, 12), cent[np.arange(8), codes.astype(np.intp)])
    assert metrics["relative_reconstruction_error"] == pytest.approx(rel_error(clustered, dec), rel=1e-9)
    assert metrics["bytes_per_vector"] == 8 and metrics["m"] == 8 and metrics["sub_dim"] == 12
    assert 1 <= metrics["kmeans_iterations_max"] <= 20


def test_pq_with_more_sub_vectors_reconstructs_better(clustered):
    errors = {}
    for m in (8, 48):
        a = create("quantize", method="pq", m=m)
        metrics = a.fit(clustered)
        assert metrics["bytes_per_vector"] == m == a.out_dim()
        errors[m] = metrics["relative_reconstruction_error"]
    assert errors[48] < 0.5 * errors[8] and errors[8] < 0.3  # clusters are found either way
    # m=0 means D/8 sub-vectors
    auto = create("quantize", method="pq")
    auto.fit(clustered[:300])
    assert auto.out_dim() == 12 and auto.params()["m"] == 0


def test_pq_codes_do_not_depend_on_the_batch(clustered):
    a = create("quantize", method="pq", m=12, iters=5)
    a.fit(clustered)
    batch = a.transform(clustered)
    for i in (0, 511, 1023):
        assert np.array_equal(a.transform(clustered[i : i + 1])[0], batch[i])
