"""Default weights come from the hub via ``timm.create_model(..., pretrained=True)``.

The real download is marked ``network`` and skipped when the hub cannot be reached; the
offline failure is real too: a fresh process with ``HF_HUB_OFFLINE=1`` and an empty cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.testing import hub_unreachable_reason, write_images


@pytest.mark.network
def test_real_test_resnet_weights_from_the_hub(tmp_path):
    reason = hub_unreachable_reason()
    if reason:
        pytest.skip(f"hub not reachable: {reason}")
    import timm
    import torch

    from featurestore_timm.testing import reference_pixels

    imgs = write_images(tmp_path / "imgs", 2, size=(96, 72))
    fs = FeatureStore(tmp_path / "store.lance")
    s = fs.extract([tmp_path / "imgs"], backbone="timm:test_resnet", workers=0)
    assert (s.written, s.errors, s.ok) == (2, 0, True)
    card = fs.card(s.table)
    assert card.weights_source == "hf-hub:timm/test_resnet.r160_in1k" and card.weights_arg is None
    model = timm.create_model("test_resnet.r160_in1k", pretrained=True).eval()
    rows = {str(Path(r["uri"]).resolve()): r for r in fs.table(s.table).to_arrow().to_pylist()}
    for p in imgs:
        with torch.no_grad():
            pooled = model.forward_head(model.forward_features(reference_pixels(model, p)), pre_logits=True)[0]
        np.testing.assert_allclose(np.asarray(rows[str(p.resolve())]["cls"], np.float32), pooled.numpy(), atol=1e-4)


OFFLINE_SCRIPT = """
from featurestore.api import create_backbone
from featurestore.errors import WeightsNotFoundError
try:
    create_backbone("resnet50")
except WeightsNotFoundError as exc:
    print("ERROR:", exc)
else:
    print("LOADED")
"""


@pytest.mark.slow  # a subprocess
def test_offline_without_cache_is_weights_not_found(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    out = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    msg = out.stdout
    assert msg.startswith("ERROR:"), msg
    assert "'resnet50'" in msg and "'timm/resnet50.a1_in1k'" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "--weights FILE" in msg and "hf download timm/resnet50.a1_in1k --local-dir DIR" in msg


# -- hub unreachable: a loopback server that accepts connections and never answers ---------


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("backbone, repo", [("resnet50", "'timm/resnet50.a1_in1k'"), ("timm:resnet18", "'timm/resnet18.<tag>'")])
def test_unreachable_hub_fails_before_importing_timm(backbone, repo, tmp_path, fs_silent_hub):
    from featurestore.testing import hub_env, run_cli_fresh

    write_images(tmp_path / "img", 1)
    args = ["extract", str(tmp_path / "img"), "-b", backbone, "-s", str(tmp_path / "s")]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert (got["rc"], got["imported"]) == (2, []), err
    assert f"backbone {backbone!r} needs {repo}" in err and "--weights DIR" in err and "HF_HUB_OFFLINE=1" in err
    assert fs_silent_hub.connections == 1  # one probe, no library request


@pytest.mark.slow  # fresh interpreters
def test_unreachable_hub_loads_cached_weights(tmp_path, fs_silent_hub):
    """timm's own hub path (create_model(pretrained=True)) reads the cache, with no request."""
    from featurestore.testing import hub_env, put_in_hub_cache, run_cli_fresh
    from featurestore_timm.testing import make_tiny_timm

    put_in_hub_cache(tmp_path / "hf-cache", "timm/test_resnet.r160_in1k", make_tiny_timm(tmp_path / "export", fmt="dir"))
    write_images(tmp_path / "img", 2, size=(96, 72))
    args = ["extract", str(tmp_path / "img"), "-b", "timm:test_resnet", "-s", str(tmp_path / "s"), "--workers", "0", "--json"]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert got["rc"] == 0, err
    assert fs_silent_hub.connections == 1
