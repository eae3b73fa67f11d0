import torch
import pytest

from featurestore.hashing import canonical_json, content_id, model_hash, weights_sha256


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"b.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(3, generator=g), "c.idx": torch.arange(5)}


def test_weights_hash_ignores_order_and_storage():
    t = _tensors()
    forward = weights_sha256(t.items())
    backward = weights_sha256(reversed(list(t.items())))
    # a non-contiguous view with the same values hashes like the contiguous tensor
    noncontig = {k: (v.t().contiguous().t() if v.ndim == 2 else v) for k, v in t.items()}
    assert forward == backward == weights_sha256(noncontig.items())


def test_one_changed_element_changes_the_hash():
    t = _tensors()
    base = weights_sha256(t.items())
    t["b.weight"] = t["b.weight"].clone()
    t["b.weight"][2, 1] += 1e-6
    assert weights_sha256(t.items()) != base


def test_name_dtype_and_shape_are_hashed():
    t = _tensors()
    base = weights_sha256(t.items())
    renamed = dict(t)
    renamed["z.bias"] = renamed.pop("a.bias")
    assert weights_sha256(renamed.items()) != base
    half = dict(t, **{"a.bias": t["a.bias"].half()})
    assert weights_sha256(half.items()) != base
    reshaped = dict(t, **{"b.weight": t["b.weight"].reshape(3, 4)})  # same bytes, other shape
    assert weights_sha256(reshaped.items()) != base


def test_bfloat16_tensors_hash():
    t = {"w": torch.ones(3, dtype=torch.bfloat16)}
    assert len(weights_sha256(t.items())) == 64


def test_duplicate_tensor_names_are_refused():
    with pytest.raises(ValueError, match="two tensors named 'w'"):
        weights_sha256([("w", torch.ones(1)), ("w", torch.ones(1))])


def test_model_hash_covers_spec_fields():
    w = weights_sha256(_tensors().items())
    spec = {"preprocessing": {"size": 224, "mean": (0.5, 0.5, 0.5)}, "output": {"layer": "last"}}
    same = {"output": {"layer": "last"}, "preprocessing": {"mean": [0.5, 0.5, 0.5], "size": 224}}
    assert model_hash(w, spec) == model_hash(w, same)  # key order and tuple/list don't matter
    assert model_hash(w, spec) != model_hash(w, {**spec, "preprocessing": {"size": 256, "mean": (0.5,) * 3}})
    assert model_hash(w, spec) != model_hash(weights_sha256(_tensors(1).items()), spec)


def test_canonical_json_is_deterministic_and_strict():
    assert canonical_json({"b": 1, "a": (1, 2)}) == '{"a":[1,2],"b":1}'
    with pytest.raises(TypeError, match="not JSON-able"):
        canonical_json({"f": object()})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_content_id_is_sha256_of_bytes():
    import hashlib

    assert content_id(b"abc") == hashlib.sha256(b"abc").hexdigest()
