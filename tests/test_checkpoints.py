"""Safe checkpoint reading shared by the plugins: tensors only, never code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from featurestore.checkpoints import read_state_dict
from featurestore.errors import ConfigError, UnsafeCheckpointError


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["w.pth", "w.pt", "w.bin", "w.ckpt", "w.pth.tar"])
def test_plain_state_dict_pickles_load(name, tensors, tmp_path):
    torch.save(tensors, tmp_path / name)
    assert _same(read_state_dict(tmp_path / name), tensors)


def test_safetensors_load(tensors, tmp_path):
    save_file(tensors, str(tmp_path / "w.safetensors"))
    assert _same(read_state_dict(tmp_path / "w.safetensors"), tensors)


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_wrapped_and_ddp_prefixed(wrap, tensors, tmp_path):
    torch.save({wrap: {f"module.{k}": v for k, v in tensors.items()}, "epoch": 3}, tmp_path / "w.pth")
    assert _same(read_state_dict(tmp_path / "w.pth"), tensors)


def test_pickle_that_runs_code_is_refused_and_not_run(tensors, tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": tensors, "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    for name in ("evil.pth", "evil.bin"):
        with pytest.raises(UnsafeCheckpointError, match="refusing to load checkpoint") as info:
            read_state_dict(tmp_path / name)
        assert name in str(info.value) and "safetensors" in str(info.value)
        assert isinstance(info.value, ConfigError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "write, needle",
    [
        (lambda p: p.with_suffix(".txt").write_text("x"), "unknown checkpoint type"),
        (lambda p: torch.save({"epoch": 1}, p), "not a state dict of tensors"),
        (lambda p: p.write_bytes(b"not a zip"), "not a readable PyTorch checkpoint"),
    ],
)
def test_bad_files_say_what_and_how(write, needle, tmp_path):
    path = tmp_path / "w.pth"
    write(path)
    target = path.with_suffix(".txt") if needle == "unknown checkpoint type" else path
    with pytest.raises(ConfigError, match=needle):
        read_state_dict(target)
