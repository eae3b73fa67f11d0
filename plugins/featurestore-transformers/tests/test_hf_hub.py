"""The real DINOv2 ViT-S/14 from the Hugging Face hub (needs network; skipped without)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.testing import hub_unreachable_reason, write_images


@pytest.mark.network
def test_real_dinov2_vits14_from_the_hub(tmp_path):
    reason = hub_unreachable_reason()
    if reason:
        pytest.skip(f"hub not reachable: {reason}")
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    imgs = write_images(tmp_path / "imgs", 2, size=(320, 240))
    fs = FeatureStore(tmp_path / "store.lance")
    s = fs.extract([tmp_path / "imgs"], backbone="dinov2_vits14", dense=True, workers=0)
    assert (s.inputs, s.written, s.errors, s.ok) == (2, 2, 0, True)
    card = fs.card(s.table)
    assert card.dim == 384 and card.architecture == "Dinov2Model"
    assert card.weights_source == "facebook/dinov2-small" and card.weights_revision
    lay = card.token_layout
    # facebook/dinov2-small: resize shortest edge 256, center crop 224, patch 14 -> 16x16
    assert (lay.grid_h, lay.grid_w, lay.patch_size, lay.num_prefix_tokens) == (16, 16, 14, 1)

    rows = {str(Path(r["uri"]).resolve()): r for r in fs.table(s.table).to_arrow().to_pylist()}
    model = AutoModel.from_pretrained("facebook/dinov2-small").eval()
    proc = AutoImageProcessor.from_pretrained("facebook/dinov2-small")
    for p in imgs:
        r = rows[str(p.resolve())]
        assert len(r["patches"]) == 256 and len(r["cls"]) == 384
        with torch.no_grad():
            px = proc(images=Image.open(p).convert("RGB"), return_tensors="pt")["pixel_values"]
            hidden = model(pixel_values=px).last_hidden_state[0]
        np.testing.assert_allclose(np.asarray(r["cls"], np.float32), hidden[0].numpy(), atol=1e-4, rtol=1e-4)
        patches = np.asarray(r["patches"], np.float32)
        np.testing.assert_allclose(patches, hidden[1:].half().float().numpy(), rtol=2**-9, atol=2e-3)


@pytest.mark.slow  # a fresh interpreter
def test_unreachable_hub_named_backbone_fails_before_importing_torch(tmp_path, fs_silent_hub):
    """A hub that accepts connections and never answers, an empty cache: the fix, after one probe."""
    from featurestore.testing import hub_env, run_cli_fresh

    write_images(tmp_path / "img", 1)
    args = ["extract", str(tmp_path / "img"), "-b", "dinov2_vits14", "-s", str(tmp_path / "s")]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert (got["rc"], got["imported"]) == (2, []), err
    assert "backbone 'dinov2_vits14' needs 'facebook/dinov2-small'" in err and "did not answer" in err
    assert "--weights DIR" in err and "HF_HUB_OFFLINE=1" in err
    assert fs_silent_hub.connections == 1
