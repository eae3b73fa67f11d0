"""pca-whiten and project against a direct numpy computation on the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore_adapters.plugin import create


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, descending eigenvalues and sign-fixed eigenvectors of np.cov (float64)."""
    x = x.astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    values, vectors = values[::-1], vectors[:, ::-1]
    # the documented convention: each axis's largest-|value| entry is positive
    top = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[top, np.arange(len(top))])
    return x.mean(axis=0), values, vectors


def test_project_equals_numpy_pca(rows16):
    mean, values, vectors = reference(rows16)
    a = create("project", dim=5)
    metrics = a.fit(rows16)
    st = a.state()
    np.testing.assert_allclose(st["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(st["components"], vectors[:, :5], atol=1e-6)
    np.testing.assert_allclose(st["eigenvalues"], values[:5], rtol=1e-5)
    want = (rows16 - mean) @ vectors[:, :5]
    got = a.transform(rows16)
    assert got.dtype == np.float32 and got.shape == (400, 5) and (a.in_dim(), a.out_dim()) == (16, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the same axes from an SVD of the centred rows, up to sign
    _, sing, vt = np.linalg.svd(rows16.astype(np.float64) - mean, full_matrices=False)
    np.testing.assert_allclose(np.abs(vt[:5] @ st["components"]), np.eye(5), atol=1e-5)
    np.testing.assert_allclose(st["eigenvalues"], sing[:5] ** 2 / (len(rows16) - 1), rtol=1e-5)
    assert metrics["explained_variance_ratio"] == pytest.approx(values[:5].sum() / values.sum(), rel=1e-9)
    assert metrics["n_fit"] == 400 and metrics["dim"] == 5


def test_project_reports_numpys_reconstruction_error(rows16):
    mean, _, vectors = reference(rows16)
    a = create("project", dim=6)
    metrics = a.fit(rows16)
    x = rows16.astype(np.float64)
    rec = (x - mean) @ vectors[:, :6] @ vectors[:, :6].T + mean
    want = np.square(x - rec).sum() / np.square(x - mean).sum()
    assert metrics["relative_reconstruction_error"] == pytest.approx(want, rel=1e-4)
    assert metrics["relative_reconstruction_error"] == pytest.approx(1 - metrics["explained_variance_ratio"], rel=1e-4)
    np.testing.assert_allclose(a.decode(a.transform(rows16)), rec, atol=1e-4)
    assert a.decode(a.transform(rows16)).dtype == np.float32


def test_whitened_fit_rows_have_identity_covariance(rows16):
    mean, values, vectors = reference(rows16)
    a = create("pca-whiten")
    metrics = a.fit(rows16)
    y = a.transform(rows16)
    assert y.shape == (400, 16) and a.out_dim() == 16  # dim=null keeps D
    np.testing.assert_allclose(np.cov(y.astype(np.float64), rowvar=False), np.eye(16), atol=1e-4)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    want = (rows16 - mean) @ vectors / np.sqrt(values + 1e-6 * values[0])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # full width: decode is the exact inverse (up to float32)
    np.testing.assert_allclose(a.decode(y), rows16, atol=1e-4)
    assert metrics["explained_variance_ratio"] == pytest.approx(1.0)
    assert metrics["relative_reconstruction_error"] < 1e-10


def test_whiten_with_fewer_axes_and_eps(rows16):
    mean, values, vectors = reference(rows16)
    a = create("pca-whiten", dim=4, eps=0.5)  # a large eps: visibly shrinks every axis
    a.fit(rows16)
    s = np.sqrt(values[:4] + 0.5 * values[0])
    np.testing.assert_allclose(a.state()["scale"], s, rtol=1e-5)
    y = a.transform(rows16)
    np.testing.assert_allclose(y, (rows16 - mean) @ vectors[:, :4] / s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.var(y.astype(np.float64), axis=0, ddof=1), values[:4] / s**2, rtol=1e-4)
    # decode undoes the scaling: the same rank-4 reconstruction as project
    p = create("project", dim=4)
    p.fit(rows16)
    np.testing.assert_allclose(a.decode(y), p.decode(p.transform(rows16)), atol=1e-4)


def test_sign_convention_and_rank_deficient_rows():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((200, 3)) @ rng.standard_normal((3, 8))).astype(np.float32)  # rank 3 in 8-d
    a = create("pca-whiten")
    a.fit(x)
    comp = a.state()["components"]
    top = np.abs(comp).argmax(axis=0)
    assert (comp[top, np.arange(8)] > 0).all()
    np.testing.assert_allclose(comp.T @ comp, np.eye(8), atol=1e-5)
    # the 5 empty axes are divided by sqrt(eps * largest), not by ~0: outputs stay finite and tiny
    y = a.transform(x)
    assert np.isfinite(y).all() and np.abs(y[:, 3:]).max() < 1e-2


def test_a_row_transforms_the_same_alone_or_in_a_batch(rows96):
    # 96 wide: a one-row float32 product would take another BLAS path and differ in the last bits
    for a in (create("pca-whiten", dim=32), create("project", dim=32)):
        a.fit(rows96)
        batch = a.transform(rows96)
        for i in (0, 17, 599):
            assert np.array_equal(a.transform(rows96[i : i + 1])[0], batch[i])
        assert np.array_equal(a.transform(rows96[100:107]), batch[100:107])
