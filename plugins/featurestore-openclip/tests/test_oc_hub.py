"""Real open_clip weights (needs network: skipped without)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore import FeatureStore
from featurestore.testing import hub_unreachable_reason, write_images


@pytest.mark.network
def test_real_clip_vitb32_openai(tmp_path):
    reason = hub_unreachable_reason()
    if reason:
        pytest.skip(f"hub not reachable: {reason}")
    import open_clip

    write_images(tmp_path / "imgs", 2, size=(320, 240))
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([tmp_path / "imgs"], backbone="clip_vitb32_openai", dense=True, workers=0)
    assert (s.written, s.errors) == (2, 0)
    card = fs.card(s.table)
    assert (card.dim, card.patch_dim, card.text_dim) == (512, 768, 512)
    assert card.output_spec["architecture"]["quick_gelu"] is True  # OpenAI weights need QuickGELU
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained="openai")
    row = fs.table(s.table).to_arrow().to_pylist()[0]
    with torch.no_grad():
        ref = model.eval().encode_image(preprocess(Image.open(row["uri"]).convert("RGB")).unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(np.asarray(row["cls"], np.float32), ref, atol=1e-4)
    hits = fs.search(s.table, "a photo of a dog", k=2)
    assert len(hits) == 2
