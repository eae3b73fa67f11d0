"""The model hash follows what determines the features: tensors, hyperparameters, specs; not files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from featurestore.api import create_backbone
from featurestore.extract import build_card
from featurestore_example.backbone import load_backbone
from featurestore_example.model import PatchNetConfig

NAME = "example_patchnet"


def card(weights, *, dense: bool = False, config: PatchNetConfig | None = None):
    backbone = create_backbone(NAME, weights=str(weights)) if config is None else load_backbone(NAME, str(weights), config)
    return build_card(backbone, NAME, dense=dense)


@pytest.fixture(scope="module")
def base(example_weights):
    return card(example_weights)


def test_same_tensors_in_another_file_hash_alike(base, example_weights, tmp_path):
    tensors = load_file(example_weights)
    other = tmp_path / "elsewhere" / "renamed.safetensors"
    other.parent.mkdir()
    save_file(dict(reversed(list(tensors.items()))), other, metadata={"note": "other bytes, same tensors"})
    assert other.read_bytes() != example_weights.read_bytes()
    c = card(other)
    assert (c.weights_sha256, c.model_hash) == (base.weights_sha256, base.model_hash)
    assert c.weights_source != base.weights_source  # recorded, but not hashed


def test_one_changed_weight_element_changes_the_hash(base, example_weights, tmp_path):
    tensors = load_file(example_weights)
    tensors["blocks.1.fc2.bias"][5] += 1e-3
    changed = tmp_path / "changed.safetensors"
    save_file(tensors, changed)
    c = card(changed)
    assert c.weights_sha256 != base.weights_sha256
    assert c.model_hash != base.model_hash and c.table != base.table


def test_a_hyperparameter_outside_the_tensors_changes_the_hash(base, example_weights):
    """heads=2 fits the very same tensors but computes other features: the output spec must tell."""
    c = card(example_weights, config=PatchNetConfig(heads=2))
    assert c.weights_sha256 == base.weights_sha256
    assert c.model_hash != base.model_hash


def test_dense_is_another_model(base, example_weights):
    assert card(example_weights, dense=True).model_hash != base.model_hash


@pytest.mark.slow  # subprocesses
def test_make_weights_cli_is_seeded(tmp_path):
    def make(out, seed):
        cmd = [sys.executable, "-m", "featurestore_example.make_weights", str(out), "--seed", str(seed)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    res = make(tmp_path / "a.safetensors", 3)
    assert res.returncode == 0, res.stderr
    assert "--backbone example_patchnet --weights" in res.stdout
    assert make(tmp_path / "b.safetensors", 3).returncode == 0
    assert make(tmp_path / "c.safetensors", 4).returncode == 0
    a, b, c = (load_file(tmp_path / f"{x}.safetensors") for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["patch_embed.weight"], c["patch_embed.weight"])
    res = make(tmp_path, 0)
    assert res.returncode == 2 and "is a directory" in res.stderr
