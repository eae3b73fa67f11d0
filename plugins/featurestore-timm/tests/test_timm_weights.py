"""``--weights``: checkpoint files and export directories, the model hash, and refusals.

The model hash covers the tensors, not the file they came from: the same tensors as
.safetensors, a plain .pth, a .pth wrapped under 'state_dict', or a timm export directory
hash alike; one changed element changes it. The classifier is not built, so a checkpoint's
classifier neither changes the hash nor is required.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from featurestore import FeatureStore
from featurestore.api import create_backbone
from featurestore.errors import ConfigError, WeightsNotFoundError
from featurestore.extract import build_card
from featurestore.testing import write_images
from featurestore_timm.loading import CheckpointMismatchError, UnsafeCheckpointError
from featurestore_timm.testing import make_tiny_timm

NAME = "timm:test_resnet"


def card_of(weights: Path | str, name: str = NAME):
    return build_card(create_backbone(name, weights=str(weights)), name, dense=True)


@pytest.fixture(scope="module")
def tensors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return load_file(str(make_tiny_timm(tmp_path_factory.mktemp("timm_w"), "test_resnet", seed=3)))


def test_same_tensors_in_any_container_hash_alike(tensors, tmp_path):
    st = tmp_path / "a.safetensors"
    save_file(tensors, str(st))
    pth = tmp_path / "b.pth"
    torch.save(tensors, pth)
    wrapped = tmp_path / "c.pt"
    torch.save({"state_dict": tensors, "epoch": 3}, wrapped)
    ddp = tmp_path / "d.bin"
    torch.save({"model": {f"module.{k}": v for k, v in tensors.items()}}, ddp)
    export = tmp_path / "export"
    export.mkdir()
    save_file(tensors, str(export / "model.safetensors"))
    (export / "config.json").write_text('{"architecture": "test_resnet", "num_classes": 10, "pretrained_cfg": {}}')
    cards = [card_of(p) for p in (st, pth, wrapped, ddp, export)]
    assert len({c.model_hash for c in cards}) == 1
    assert len({c.weights_sha256 for c in cards}) == 1
    assert cards[0].weights_source == str(st.resolve()) and cards[-1].weights_source == str(export.resolve())
    # the named backbone is the same architecture with the same preprocessing: same hash again
    assert card_of(st, "timm:test_resnet.r160_in1k").model_hash == cards[0].model_hash


def test_one_changed_element_changes_the_hash(tensors, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(a))
    changed = {k: v.clone() for k, v in tensors.items()}
    changed["layer1.0.conv1.weight"].view(-1)[7] += 1e-3
    save_file(changed, str(b))
    assert card_of(a).model_hash != card_of(b).model_hash


def test_running_stats_are_hashed(tensors, tmp_path):
    """BatchNorm running statistics are buffers, not parameters, and still change the features."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(a))
    save_file({k: (v + 0.5 if k == "bn1.running_mean" else v) for k, v in tensors.items()}, str(b))
    assert card_of(a).weights_sha256 != card_of(b).weights_sha256


def test_classifier_is_ignored(tensors, tmp_path, fs_image_dir, fs_store_path):
    """A checkpoint's classifier (fc) does not shape the features: other fc or none, same hash."""
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file(tensors, str(a))
    save_file({k: (torch.randn_like(v) if k.startswith("fc.") else v) for k, v in tensors.items()}, str(b))
    save_file({k: v for k, v in tensors.items() if not k.startswith("fc.")}, str(c))
    assert card_of(a).model_hash == card_of(b).model_hash == card_of(c).model_hash
    backbone = create_backbone(NAME, weights=str(a))
    assert backbone.loaded.ignored_keys == ["fc.bias", "fc.weight"]
    assert not any(k.startswith("fc.") for k, _ in backbone.named_tensors())
    assert any(k.endswith("running_var") for k, _ in backbone.named_tensors())


class RunsCode:
    """Unpickling this calls open(marker, "w"): what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused_and_not_run(tensors, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": tensors, "payload": RunsCode(marker)}, evil)
    with zipfile.ZipFile(evil) as z:  # the payload really is in the file
        assert any(b"open" in z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    with pytest.raises(UnsafeCheckpointError) as info:
        create_backbone(NAME, weights=str(evil))
    msg = str(info.value)
    assert str(evil) in msg and "weights_only" in msg and "safetensors" in msg and "refusing to load" in msg
    assert isinstance(info.value, ConfigError)
    assert not marker.exists()


def test_plain_pickle_file_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        create_backbone(NAME, weights=str(evil))
    assert not marker.exists()


def test_checkpoint_of_another_architecture_lists_keys(tmp_path):
    vit = make_tiny_timm(tmp_path, "test_vit")
    with pytest.raises(CheckpointMismatchError) as info:
        create_backbone(NAME, weights=str(vit))
    msg = str(info.value)
    assert str(vit) in msg and "missing keys: bn1." in msg and "unexpected keys: blocks.0." in msg
    assert "in all)" in msg  # long lists are cut, with the count
    assert "test_resnet" in msg and "--backbone timm:" in msg


def test_missing_tensor_and_wrong_shape(tensors, tmp_path):
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "layer2.0.bn1.running_var"}, str(short))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: layer2\.0\.bn1\.running_var"):
        create_backbone(NAME, weights=str(short))
    bad = tmp_path / "bad.safetensors"
    save_file({**tensors, "conv1.0.weight": torch.zeros(3, 3, 3, 3)}, str(bad))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: conv1\.0\.weight: file \(3, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        create_backbone(NAME, weights=str(bad))


def test_missing_file_is_weights_not_found(tmp_path):
    missing = tmp_path / "nope" / "resnet.safetensors"
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("resnet50", weights=str(missing))
    assert str(missing) in str(info.value) and "no such file" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_tag_lists_real_ones(monkeypatch):
    # HF_HUB_OFFLINE: timm checks the name (without it, offline, a name is looked up in the cache as it is)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("resnet50", weights="not_a_tag")
    assert "'not_a_tag'" in str(info.value) and "a1_in1k" in str(info.value)
    with pytest.raises(ConfigError, match=r"'bogus' is not a pretrained tag of 'test_vit'.*r160_in1k"):
        create_backbone("timm:test_vit.bogus")


def test_unknown_model_name_lists_close_matches(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as above: timm checks the name
    with pytest.raises(ConfigError) as info:
        create_backbone("timm:resnet5O")
    msg = str(info.value)
    assert "'resnet5O'" in msg and "resnet50" in msg and "timm.list_models()" in msg
    with pytest.raises(ConfigError, match="looks like a path or hub id"):
        create_backbone("timm:timm/resnet50.a1_in1k")


def test_export_directory_of_another_architecture(tmp_path):
    d = make_tiny_timm(tmp_path / "vit", "test_vit", fmt="dir")
    with pytest.raises(ConfigError, match=r"holds a 'test_vit'.*--backbone timm:test_vit"):
        create_backbone(NAME, weights=str(d))


def test_export_directory_sets_preprocessing(tmp_path, fs_store_path):
    """A timm export directory's config.json (here a 64x64 input) is what preprocessing uses and hashes."""
    d = make_tiny_timm(tmp_path / "small", "test_resnet", fmt="dir", pretrained_cfg_overlay={"input_size": (3, 64, 64), "crop_pct": 1.0})
    write_images(tmp_path / "imgs", 2)
    fs = FeatureStore(fs_store_path)
    s = fs.extract([tmp_path / "imgs"], backbone=NAME, weights=str(d), dense=True, workers=0)
    card = fs.card(s.table)
    assert card.preprocessing["data_config"]["input_size"] == [3, 64, 64]
    assert card.preprocessing["data_config"]["crop_pct"] == 1.0
    assert (card.token_layout.grid_h, card.token_layout.input_h) == (2, 64)
    same_tensors = tmp_path / "t.safetensors"
    save_file(load_file(str(d / "model.safetensors")), str(same_tensors))
    other = card_of(same_tensors)  # same tensors, default 160x160 preprocessing
    assert other.weights_sha256 == card.weights_sha256 and other.model_hash != card.model_hash
