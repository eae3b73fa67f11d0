"""Failures to load a transformers backbone are typed errors that name the source and the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore.api import create_backbone
from featurestore.errors import UnsupportedModelError, WeightsNotFoundError
from featurestore.testing import write_images

NO_SUCH_HUB_ID = "featurestore-tests/no-such-model-7f3a"


def test_missing_directory(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(f"hf:{missing}")
    msg = str(info.value)
    assert str(missing.resolve()) in msg
    assert "no such directory" in msg and "--weights" in msg
    assert isinstance(info.value, FileNotFoundError)  # catchable as the builtin too


def test_missing_directory_as_weights_of_named_backbone(tmp_path):
    missing = tmp_path / "dinov2-small"
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("dinov2_vits14", weights=str(missing))
    msg = str(info.value)
    assert str(missing.resolve()) in msg and "--weights" in msg
    assert "hf download facebook/dinov2-small" in msg  # where to get the real weights


def test_directory_without_config_json(fs_tiny_model_factory, tmp_path):
    d = shutil.copytree(fs_tiny_model_factory("dinov2"), tmp_path / "no_config")
    (d / "config.json").unlink()
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(f"hf:{d}")
    msg = str(info.value)
    assert str(d.resolve()) in msg and "config.json" in msg and "--weights" in msg


def test_directory_without_weight_files(fs_tiny_model_factory, tmp_path):
    d = shutil.copytree(fs_tiny_model_factory("dinov2"), tmp_path / "no_weights")
    (d / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(f"hf:{d}")
    assert str(d.resolve()) in str(info.value) and "--weights" in str(info.value)


def _save_siglip(d: Path) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.SiglipVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)
    tf.SiglipVisionModel(cfg).save_pretrained(d)
    tf.SiglipImageProcessor(size={"height": 28, "width": 28}).save_pretrained(d)
    return d


def test_siglip_has_no_cls_token(tmp_path):
    d = _save_siglip(tmp_path / "siglip")
    with pytest.raises(UnsupportedModelError) as info:
        create_backbone(f"hf:{d}")
    msg = str(info.value)
    assert "siglip_vision_model" in msg and "no CLS token" in msg
    assert "open_clip" in msg


def test_named_backbone_with_weights_of_another_width(fs_tiny_model_factory):
    d = fs_tiny_model_factory("dinov2", hidden=32)
    with pytest.raises(UnsupportedModelError) as info:
        create_backbone("dinov2_vits14", weights=str(d))
    msg = str(info.value)
    assert "width 384" in msg and "width 32" in msg
    assert f"hf:{d.resolve()}" in msg  # the fix: load it as a generic hf: model


def _offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1 for this process.

    huggingface_hub reads the variable once, at import; it is imported by now, so the
    module constant that ``is_offline_mode()`` returns is patched too (the subprocess
    test below covers the variable alone, read at start-up).
    """
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_offline_fails_fast_and_names_the_id(monkeypatch):
    import transformers  # noqa: F401  (import time is not what is measured)

    _offline(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(f"hf:{NO_SUCH_HUB_ID}")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, f"offline load took {elapsed:.1f}s: it should not try the network"
    msg = str(info.value)
    assert repr(NO_SUCH_HUB_ID) in msg
    assert f"hf download {NO_SUCH_HUB_ID}" in msg and "--weights" in msg


def test_named_backbone_offline_names_its_hub_id(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("facebook/dinov2-small", "config.json"), str):
        pytest.skip("facebook/dinov2-small is in the local hub cache, so it loads offline")
    _offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("dinov2_vits14")
    msg = str(info.value)
    assert "'dinov2_vits14'" in msg and "'facebook/dinov2-small'" in msg and "--weights" in msg


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("featurestore")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "featurestore.cli"]
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_unknown_backbone_exits_2_and_lists_names(tmp_path):
    write_images(tmp_path / "imgdir", 1)
    res = _cli(["extract", str(tmp_path / "imgdir"), "--backbone", "nope", "--store", str(tmp_path / "s")])
    assert res.returncode == 2, res.stderr
    assert "unknown backbone 'nope'" in res.stderr
    assert "dinov2_vits14" in res.stderr and "dinov2_vitg14_reg" in res.stderr and "hf:" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_offline_named_backbone_exits_2_with_fix(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME, as a user would set them: a quick, clear failure."""
    write_images(tmp_path / "imgdir", 1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    t0 = time.perf_counter()
    res = _cli(["extract", str(tmp_path / "imgdir"), "--backbone", "dinov2_vits14", "--store", str(tmp_path / "s")], env=env)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2, res.stderr
    assert "facebook/dinov2-small" in res.stderr and "--weights" in res.stderr
    assert "Traceback" not in res.stderr
    assert elapsed < 30  # no network retries (those take ~25 s when the hub is unreachable)
