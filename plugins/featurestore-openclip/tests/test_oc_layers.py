"""``--layers`` on open_clip models: block outputs captured with forward hooks on the
reference model's own blocks, then the tower's final norm, equal what is stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore import FeatureStore
from featurestore.testing import write_images


def _hooked_blocks(model_dir: Path, image: Path, blocks: list[int]):
    """(globals (L, W), tokens (L, N, W)) of the chosen blocks, after the final norm, prefix dropped."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    visual = model.visual
    timm_trunk = getattr(visual, "trunk", None)
    seq = timm_trunk.blocks if timm_trunk is not None else visual.transformer.resblocks
    norm = timm_trunk.norm if timm_trunk is not None else visual.ln_post
    prefix = timm_trunk.num_prefix_tokens if timm_trunk is not None else 1
    has_cls = timm_trunk is None or timm_trunk.cls_token is not None
    captured: dict[int, torch.Tensor] = {}
    handles = [seq[b].register_forward_hook(lambda m, i, o, b=b: captured.__setitem__(b, o)) for b in blocks]
    px = preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        model.encode_image(px)
        normed = [norm(captured[b]) for b in blocks]
    for h in handles:
        h.remove()
    glob = [x[0, 0] if has_cls else x[0, prefix:].mean(0) for x in normed]
    return torch.stack(glob).numpy(), torch.stack([x[0, prefix:] for x in normed]).numpy()


@pytest.mark.parametrize("kind, layers, blocks", [("clip", "-1,0", [1, 0]), ("siglip", "last2", [7, 8])])
def test_layers_equal_hooked_block_outputs(kind, layers, blocks, fs_tiny_openclip, fs_tiny_siglip, tmp_path):
    model_dir = {"clip": fs_tiny_openclip, "siglip": fs_tiny_siglip}[kind]
    imgs = tmp_path / "imgs"
    write_images(imgs, 2, size=(50, 40), fmt="PNG", seed=8)
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([imgs], backbone=f"open_clip:local-dir:{model_dir}", layers=layers, dense=True, workers=0)
    card = fs.card(s.table)
    width = 32 if kind == "clip" else 96
    assert card.layers == blocks and card.layer_dims == [width, width] and card.dim == 2 * width
    assert card.text_dim is None
    assert ("class token" if kind == "clip" else "mean of patch tokens") in card.token_layout.cls_source
    for row in fs.table(s.table).to_arrow().to_pylist():
        glob, tokens = _hooked_blocks(model_dir, Path(row["uri"]), blocks)
        np.testing.assert_allclose(np.asarray(row["cls"], np.float32), glob.reshape(-1), atol=1e-4, rtol=0)
        expected = np.concatenate(list(tokens), axis=-1)  # (N, W * L), channels concatenated in the order asked
        stored = np.asarray(row["patches"], np.float32)
        np.testing.assert_allclose(stored, expected.astype(np.float16).astype(np.float32), atol=2e-3, rtol=1e-3)
