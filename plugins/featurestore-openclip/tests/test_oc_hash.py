"""The model hash of an open_clip backbone covers both towers and the tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from featurestore.api import create_backbone
from featurestore.extract import build_card


def _card(model_dir: Path, weights: str | None = None, **kw):
    name = f"open_clip:local-dir:{model_dir}"
    return build_card(create_backbone(name, weights), name, dense=False, **kw)


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    st = dst / "open_clip_model.safetensors"
    tensors = load_file(str(st))
    edit(tensors)
    save_file(tensors, str(st))
    return dst


def test_same_tensors_from_bin_or_another_dir_same_hash(fs_tiny_openclip_factory, tmp_path):
    a = fs_tiny_openclip_factory("clip", seed=3)
    b = fs_tiny_openclip_factory("clip", seed=3, fmt="bin")
    c = tmp_path / "moved"
    shutil.copytree(a, c)
    ha, hb, hc = _card(a), _card(b), _card(c)
    assert ha.model_hash == hb.model_hash == hc.model_hash
    assert hb.weights_source.endswith("open_clip_pytorch_model.bin")


def test_one_text_tower_element_changes_the_hash(fs_tiny_openclip, tmp_path):
    def bump(t: dict[str, torch.Tensor]) -> None:
        t["token_embedding.weight"][7, 3] += 1.0

    base = _card(fs_tiny_openclip)
    edited = _card(_copy_with(fs_tiny_openclip, tmp_path / "text_edit", bump))
    assert base.weights_sha256 != edited.weights_sha256 and base.model_hash != edited.model_hash


def test_logit_scale_and_tokenizer_are_covered(fs_tiny_openclip, tmp_path):
    def scale(t: dict[str, torch.Tensor]) -> None:
        t["logit_scale"] += 0.5

    base = _card(fs_tiny_openclip)
    assert _card(_copy_with(fs_tiny_openclip, tmp_path / "scale", scale)).model_hash != base.model_hash
    # same tensors, a text config whose tokenizer truncates differently: another hash
    d = tmp_path / "ctx"
    shutil.copytree(fs_tiny_openclip, d)
    cfg = json.loads((d / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"clean": "whitespace"}
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    other = _card(d)
    assert other.weights_sha256 == base.weights_sha256 and other.model_hash != base.model_hash


def test_dense_and_layers_are_other_models(fs_tiny_openclip):
    name = f"open_clip:local-dir:{fs_tiny_openclip}"
    bb = create_backbone(name)
    hashes = {
        build_card(bb, name, dense=False).model_hash,
        build_card(bb, name, dense=True).model_hash,
        build_card(bb, name, dense=False, layers=(1,)).model_hash,
        build_card(bb, name, dense=False, layers=(0, 1)).model_hash,
    }
    assert len(hashes) == 4
