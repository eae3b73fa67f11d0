"""linear-head: a classifier on Gaussian blobs, its logits, its bottleneck and its class names."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore_adapters.plugin import create

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def test_logits_classify_held_out_rows(blob_data):
    (x, y), (xt, yt) = blob_data
    a = create("linear-head")
    assert a.needs_labels and not a.invertible and a.classes() is None  # nothing known before fitting
    metrics = a.fit(x, y, CLASSES)
    assert (a.in_dim(), a.out_dim(), a.out_dtype()) == (64, 5, "float32")
    assert a.classes() == CLASSES and metrics["classes"] == CLASSES
    assert metrics["n_fit"] == 600 and metrics["n_classes"] == 5 and 1 <= metrics["lbfgs_iterations"] <= 200
    logits = a.transform(xt)
    assert logits.shape == (600, 5) and logits.dtype == np.float32
    held_out = np.mean(logits.argmax(axis=1) == yt)
    assert held_out > 0.95
    train = np.mean(a.transform(x).argmax(axis=1) == y)
    assert metrics["train_accuracy"] == pytest.approx(train)
    # the stored standardization is the fit rows' own
    np.testing.assert_allclose(a.state()["mean"], x.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.state()["std"], x.std(axis=0), rtol=1e-5)
    with pytest.raises(NotImplementedError):
        a.decode(logits)


def test_the_logits_are_the_stored_affine_map(blob_data):
    (x, y), _ = blob_data
    a = create("linear-head", standardize=False, l2=1e-2, max_iter=50)
    a.fit(x, y, CLASSES)
    st = a.state()
    assert (st["mean"] == 0).all() and (st["std"] == 1).all()
    want = x.astype(np.float64) @ st["weight"].astype(np.float64) + st["bias"]
    np.testing.assert_allclose(a.transform(x), want, rtol=1e-5, atol=1e-5)
    # a stronger penalty gives smaller weights
    b = create("linear-head", standardize=False, l2=1.0, max_iter=50)
    b.fit(x, y, CLASSES)
    assert np.linalg.norm(b.state()["weight"]) < 0.5 * np.linalg.norm(st["weight"])


def test_bottleneck_outputs_a_dim_wide_space(blob_data):
    (x, y), (xt, yt) = blob_data
    a = create("linear-head", dim=3)
    metrics = a.fit(x, y, CLASSES)
    h = a.transform(xt)
    assert h.shape == (600, 3) and h.dtype == np.float32 and a.out_dim() == 3
    assert a.classes() is None  # its outputs are not classes
    assert metrics["classes"] == CLASSES and metrics["train_accuracy"] > 0.95
    st = a.state()
    assert st["weight"].shape == (64, 3) and st["head_weight"].shape == (3, 5) and st["head_bias"].shape == (5,)
    assert np.mean(a.logits(xt).argmax(axis=1) == yt) > 0.95
    # the space separates the classes: nearest class mean in it classifies held-out rows
    means = np.stack([a.transform(x[y == c]).mean(axis=0) for c in range(5)])
    nearest = np.square(h[:, None, :] - means[None]).sum(-1).argmin(axis=1)
    assert np.mean(nearest == yt) > 0.9


def test_labels_without_names_and_class_names_after_reload(blob_data):
    (x, y), _ = blob_data
    a = create("linear-head", max_iter=30)
    metrics = a.fit(x, y)
    assert a.out_dim() == 5 and a.classes() is None and metrics["classes"] is None
    b = create("linear-head", max_iter=30)
    b.fit(x, y, CLASSES)
    assert b.classes() == CLASSES
    b.load_state(a.state())  # names are not tensors: once reloaded, the core keeps them from the fit metrics
    assert b.classes() is None
    assert np.array_equal(b.transform(x), a.transform(x))
