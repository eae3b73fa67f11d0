"""The plugin as users meet it: entry point discovery, the CLI with worker processes, the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from featurestore.api import list_backbones
from featurestore.cli import main
from featurestore_timm.plugin import NAMED
from featurestore_timm.testing import reference_model, reference_pixels


@pytest.mark.slow  # a forkserver worker
def test_cli_extract_with_a_worker_process(fs_tiny_timm_resnet, fs_image_dir, fs_store_path, capsys):
    """--workers 1: the preprocessor is pickled into a forkserver worker and runs timm's transform there."""
    argv = ["extract", str(fs_image_dir), "--backbone", "timm:test_resnet", "--weights", str(fs_tiny_timm_resnet)]
    argv += ["--store", str(fs_store_path), "--workers", "1", "--batch-size", "3", "--dense", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["inputs"], summary["written"], summary["errors"], summary["ok"]) == (8, 8, 0, True)
    fs = FeatureStore(fs_store_path)
    card = fs.card(summary["table"])
    assert card.weights_arg == str(fs_tiny_timm_resnet) and card.backbone == "timm:test_resnet"
    model = reference_model("test_resnet", fs_tiny_timm_resnet)
    rows = fs.table(summary["table"]).to_arrow().to_pylist()
    assert len(rows) == 8
    for r in rows:
        with torch.no_grad():
            pooled = model.forward_head(model.forward_features(reference_pixels(model, Path(r["uri"]))), pre_logits=True)
        np.testing.assert_allclose(np.asarray(r["cls"], np.float32), pooled[0].numpy(), atol=1e-4)
        assert len(r["patches"]) == 25 and (r["grid_h"], r["grid_w"]) == (5, 5)

    # a second run computes nothing: every image is already in the model's table
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["written"], again["skipped_existing"], again["table"]) == (0, 8, summary["table"])


def test_cli_error_names_the_fix(fs_image_dir, fs_store_path, capsys):
    argv = ["extract", str(fs_image_dir), "--backbone", "timm:resnet50", "--weights", "/no/such/r50.safetensors", "--store", str(fs_store_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "/no/such/r50.safetensors" in err and "Fix:" in err


def test_backbones_are_discovered_through_the_entry_point(capsys):
    assert main(["backbones", "timm*", "--json"]) == 0
    [family] = json.loads(capsys.readouterr().out)
    assert family["name"] == "timm:" and family["plugin"] == "featurestore-timm"
    named = {b["name"]: b for b in list_backbones() if b["plugin"] == "featurestore-timm"}
    assert set(named) == set(NAMED) | {"timm:"}
    r50 = named["resnet50"]
    assert (r50["dim"], r50["patch_size"], r50["source"]) == (2048, 32, "hf-hub:timm/resnet50.a1_in1k")
    assert named["mobilenetv3_large_100"]["patch_dim"] == 960 and "patch_dim" not in r50


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_backbone_facts_match_timm(name):
    """Built on the meta device: shapes and configs without weights or downloads."""
    import timm
    from timm.models import get_pretrained_cfg

    info = NAMED[name]
    assert f"{name}.{info.tag}" in timm.list_pretrained(f"{name}.*")
    assert get_pretrained_cfg(f"{name}.{info.tag}").input_size == (3, info.input_size, info.input_size)
    # the plugin checks this repository in the cache, offline, before importing timm
    assert get_pretrained_cfg(f"{name}.{info.tag}").hf_hub_id == f"timm/{name}.{info.tag}"
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    assert (model.head_hidden_size, model.num_features) == (info.dim, info.patch_dim)
    assert model.feature_info[-1]["reduction"] == info.patch_size
