"""Unsafe checkpoints are refused; missing or wrong weights and names get errors with the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from featurestore.cli import main
from featurestore.testing import write_images


class _RunsCode:
    """Unpickling this would create a marker file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _extract(tmp_path: Path, backbone: str, *extra: str) -> int:
    imgs = tmp_path / "imgs"
    if not imgs.exists():
        write_images(imgs, 1, fmt="PNG")
    return main(["extract", str(imgs), "-b", backbone, "-s", str(tmp_path / "s"), "--workers", "0", *extra])


def test_pickle_that_runs_code_is_refused_and_not_run(fs_tiny_openclip, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    d = tmp_path / "evil"
    shutil.copytree(fs_tiny_openclip, d)
    (d / "open_clip_model.safetensors").unlink()
    torch.save({"visual.proj": _RunsCode(marker)}, d / "open_clip_pytorch_model.bin")
    assert _extract(tmp_path, f"open_clip:local-dir:{d}") == 2
    err = capsys.readouterr().err
    assert "refusing to load checkpoint" in err and "safetensors" in err and "open_clip_pytorch_model.bin" in err
    assert not marker.exists()
    # the same file given with --weights for a built-in architecture: refused before any model is built
    assert _extract(tmp_path, "open_clip:ViT-B-32", "--weights", str(d / "open_clip_pytorch_model.bin")) == 2
    assert "refusing to load checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_plain_state_dict_pickle_is_fine(fs_tiny_openclip_factory, tmp_path):
    d = fs_tiny_openclip_factory("clip", seed=5, fmt="bin")
    assert _extract(tmp_path, f"open_clip:local-dir:{d}") == 0


@pytest.mark.parametrize(
    "backbone, extra, needle",
    [
        ("open_clip:ViT-B-33", [], "did you mean ViT-B-32"),
        ("open_clip:ViT-B-32", [], "needs weights"),
        ("open_clip:ViT-B-32", ["--weights", "no_such_tag"], "neither a checkpoint file nor a pretrained tag"),
        ("open_clip:ViT-B-32", ["--weights", "/no/such/model.safetensors"], "does not exist"),
        ("open_clip:local-dir:/no/such/dir", [], "no such directory"),
        ("open_clip:", [], "needs a name after the colon"),
    ],
)
def test_bad_names_and_weights(backbone, extra, needle, tmp_path, capsys):
    assert _extract(tmp_path, backbone, *extra) == 2
    assert needle in capsys.readouterr().err


def test_checkpoint_of_another_architecture(fs_tiny_openclip, fs_tiny_siglip, tmp_path, capsys):
    d = tmp_path / "mixed"
    shutil.copytree(fs_tiny_siglip, d)
    (d / "open_clip_model.safetensors").unlink()
    shutil.copy(fs_tiny_openclip / "open_clip_model.safetensors", d / "open_clip_model.safetensors")
    assert _extract(tmp_path, f"open_clip:local-dir:{d}") == 2
    assert "does not fit the architecture" in capsys.readouterr().err


def test_local_dir_without_weights(fs_tiny_openclip, tmp_path, capsys):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(fs_tiny_openclip / "open_clip_config.json", d / "open_clip_config.json")
    assert _extract(tmp_path, f"open_clip:local-dir:{d}") == 2
    assert "no weights in" in capsys.readouterr().err
