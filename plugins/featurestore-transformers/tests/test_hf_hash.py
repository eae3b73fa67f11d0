"""Model hashes of transformers backbones: content, not file format or location.

``weights_sha256`` hashes the tensors; ``model_hash`` adds preprocessing, output spec
and decode policy. The same tensors from ``model.safetensors``, from a pickled
``pytorch_model.bin`` or from a copied directory hash alike; a changed weight element or
preprocessing field, or dense vs not dense, does not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from featurestore.api import create_backbone
from featurestore.extract import build_card


def card(d: Path, *, dense: bool = False, name: str = "x"):
    return build_card(create_backbone(f"hf:{d}"), name, dense=dense)


@pytest.fixture(scope="module")
def st_dir(fs_tiny_model_factory) -> Path:
    return fs_tiny_model_factory("dinov2", seed=3)


@pytest.fixture(scope="module")
def base_card(st_dir):
    return card(st_dir)


def test_bin_checkpoint_is_really_a_pickle_and_loads(fs_tiny_model_factory, st_dir):
    """safe_serialization=False gives pytorch_model.bin (transformers 5 alone would still
    write safetensors), and transformers loads it to the very same tensors."""
    from transformers import AutoModel

    bin_dir = fs_tiny_model_factory("dinov2", seed=3, safe_serialization=False)
    assert (bin_dir / "pytorch_model.bin").is_file()
    assert not list(bin_dir.glob("*.safetensors"))
    assert (bin_dir / "pytorch_model.bin").read_bytes()[:2] == b"PK"  # torch.save's zip format
    a = AutoModel.from_pretrained(bin_dir).state_dict()
    b = AutoModel.from_pretrained(st_dir).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_tensors_same_hash_across_format_and_directory(fs_tiny_model_factory, st_dir, base_card, tmp_path):
    bin_dir = fs_tiny_model_factory("dinov2", seed=3, safe_serialization=False)
    copy_dir = shutil.copytree(st_dir, tmp_path / "somewhere" / "else")
    for d in (bin_dir, copy_dir):
        c = card(d)
        assert c.weights_sha256 == base_card.weights_sha256
        assert c.model_hash == base_card.model_hash
        assert c.table == base_card.table
        assert c.weights_source == str(d.resolve())  # recorded, but not hashed


def test_backbone_name_is_not_hashed(st_dir, base_card):
    other = card(st_dir, name="another-name")
    assert other.model_hash == base_card.model_hash
    assert other.table != base_card.table  # the table name carries the backbone slug


def test_other_seed_other_weights(fs_tiny_model_factory, base_card):
    c = card(fs_tiny_model_factory("dinov2", seed=4))
    assert c.weights_sha256 != base_card.weights_sha256
    assert c.model_hash != base_card.model_hash


def test_one_changed_weight_element_changes_both_hashes(st_dir, base_card, tmp_path):
    d = shutil.copytree(st_dir, tmp_path / "edited")
    tensors = load_file(d / "model.safetensors")
    key = "embeddings.cls_token"
    assert key in tensors
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[5] += 0.5  # one element of one tensor
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    c = card(d)
    assert c.weights_sha256 != base_card.weights_sha256
    assert c.model_hash != base_card.model_hash


@pytest.mark.parametrize(
    "field, value",
    [("image_mean", [0.5, 0.5, 0.5]), ("crop_size", {"height": 42, "width": 42}), ("resample", 2)],
)
def test_preprocessing_change_changes_model_hash_only(st_dir, base_card, tmp_path, field, value):
    d = shutil.copytree(st_dir, tmp_path / f"pre_{field}")
    cfg_path = d / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg[field] != value
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    c = card(d)
    assert c.weights_sha256 == base_card.weights_sha256
    assert c.model_hash != base_card.model_hash
    assert json.loads(json.dumps(c.preprocessing["config"][field])) == value  # tuples compare as lists


def test_dense_changes_model_hash_not_weights(st_dir, base_card):
    dense = card(st_dir, dense=True)
    assert dense.weights_sha256 == base_card.weights_sha256
    assert dense.model_hash != base_card.model_hash
    assert dense.output_spec["patches"] == "last_hidden_state[:, 1:]"
    assert base_card.output_spec["patches"] is None


def test_registers_change_output_spec(fs_tiny_model_factory):
    """DINOv2 with registers slices patches after 1 + 4 prefix tokens, and says so."""
    c = card(fs_tiny_model_factory("dinov2_reg", seed=3), dense=True)
    assert c.output_spec["patches"] == "last_hidden_state[:, 5:]"
    assert c.token_layout.num_register_tokens == 4


@pytest.mark.parametrize("field, value", [("num_attention_heads", 4), ("layer_norm_eps", 1e-3), ("hidden_act", "relu")])
def test_config_change_with_equal_tensors_changes_model_hash(st_dir, base_card, tmp_path, field, value):
    """Heads, eps and activation live in no tensor but change the forward: they are hashed."""
    d = shutil.copytree(st_dir, tmp_path / f"cfg_{field}")
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg[field] != value
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    c = card(d)
    assert c.weights_sha256 == base_card.weights_sha256
    assert c.model_hash != base_card.model_hash
    assert c.output_spec["architecture"][field] == value


def test_bookkeeping_config_fields_are_not_hashed(st_dir, base_card, tmp_path):
    d = shutil.copytree(st_dir, tmp_path / "cfg_books")
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["transformers_version"] = "0.0.1"
    cfg["architectures"] = ["SomethingElse"]
    cfg["id2label"] = {"0": "a", "1": "b"}
    cfg["label2id"] = {"a": 0, "b": 1}
    cfg_path.write_text(json.dumps(cfg))
    assert card(d).model_hash == base_card.model_hash
