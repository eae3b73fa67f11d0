"""``--layers`` on timm models: CNN stages and ViT blocks, compared to timm's forward_intermediates.

CNN (test_resnet): feature_info has 5 entries (act1 /2, layer1 /4, layer2 /8, layer3 /16,
layer4 /32), widths 32, 32, 48, 192, 96 on a 160x160 input. A stage's global vector is the
spatial mean of its feature map. ViT (test_vit): 6 blocks of width 64; a block's global
vector is its CLS token after the final norm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from featurestore.api import create_backbone
from featurestore.errors import ConfigError
from featurestore.testing import write_images
from featurestore_timm.testing import reference_model, reference_pixels

RESNET_WIDTHS = [32, 32, 48, 192, 96]
RESNET_GRIDS = [80, 40, 20, 10, 5]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("timm_layer_images")
    write_images(d, 3, size=(64, 48), seed=40)
    return d


def rows_by_path(fs: FeatureStore, table: str) -> dict[Path, dict]:
    return {Path(r["uri"]).resolve(): r for r in fs.table(table).to_arrow().to_pylist()}


def test_cnn_stage_globals_are_spatial_means_of_forward_intermediates(fs_tiny_timm_resnet, images, fs_store_path):
    fs = FeatureStore(fs_store_path)
    s = fs.extract([images], backbone="timm:test_resnet", weights=str(fs_tiny_timm_resnet), layers="3,0,-1", workers=0)
    assert s.ok and s.written == 3
    card = fs.card(s.table)
    assert card.layers == [3, 0, 4] and card.layer_dims == [192, 32, 96] and card.dim == 192 + 32 + 96
    assert card.output_spec["layer"]["unit"] == "stage (feature_info)"
    model = reference_model("test_resnet", fs_tiny_timm_resnet)
    for p, r in rows_by_path(fs, s.table).items():
        with torch.no_grad():
            maps = model.forward_intermediates(reference_pixels(model, p), indices=[0, 3, 4], intermediates_only=True)
        # in the order asked for (3, 0, 4), not timm's ascending order
        expected = torch.cat([maps[1].mean(dim=(2, 3)), maps[0].mean(dim=(2, 3)), maps[2].mean(dim=(2, 3))], dim=1)[0]
        np.testing.assert_allclose(np.asarray(r["cls"], np.float32), expected.numpy(), atol=1e-4)


def test_cnn_last_stage_dense_equals_final_feature_map(fs_tiny_timm_resnet, images, fs_store_path):
    """One stage, dense: its feature map as tokens, with that stage's grid and stride in the layout."""
    fs = FeatureStore(fs_store_path)
    s = fs.extract([images], backbone="timm:test_resnet", weights=str(fs_tiny_timm_resnet), layers=[2], dense=True, workers=0)
    card = fs.card(s.table)
    lay = card.token_layout
    assert (lay.grid_h, lay.grid_w, lay.patch_size) == (20, 20, 8)
    assert card.dim == 48 and card.patch_dim is None
    model = reference_model("test_resnet", fs_tiny_timm_resnet)
    for p, r in rows_by_path(fs, s.table).items():
        with torch.no_grad():
            [m] = model.forward_intermediates(reference_pixels(model, p), indices=[2], intermediates_only=True)
        tokens = m[0].flatten(1).T  # (400, 48), row-major
        patches = np.asarray(r["patches"], np.float32)
        assert patches.shape == (400, 48) and (r["grid_h"], r["grid_w"]) == (20, 20)
        np.testing.assert_allclose(patches, tokens.half().float().numpy(), rtol=2**-10, atol=1e-3)


def test_cnn_dense_with_stages_of_different_grids_is_refused(fs_tiny_timm_resnet, images, fs_store_path):
    fs = FeatureStore(fs_store_path)
    with pytest.raises(ConfigError) as info:
        fs.extract([images], backbone="timm:test_resnet", weights=str(fs_tiny_timm_resnet), layers="2,-1", dense=True, workers=0)
    msg = str(info.value)
    assert "[2, 4]" in msg and "20x20" in msg and "5x5" in msg and "one stage per run" in msg and "--dense" in msg
    assert not fs_store_path.exists()  # refused before a store was created or anything registered


def test_backbone_layer_widths_and_layouts(fs_tiny_timm_resnet):
    b = create_backbone("timm:test_resnet", weights=str(fs_tiny_timm_resnet))
    assert b.num_layers == 5
    assert [b.feature_dim((i,)) for i in range(5)] == RESNET_WIDTHS
    assert [b.token_layout((i,)).grid_h for i in range(5)] == RESNET_GRIDS
    assert [b.token_layout((i,)).patch_size for i in range(5)] == [2, 4, 8, 16, 32]
    assert b.token_layout((1, 4)) is None  # two grids: no single patch layout
    assert b.feature_dim((1, 4)) == 32 + 96


def test_vit_block_globals_are_normed_cls_tokens(fs_tiny_timm_vit, images, fs_store_path):
    fs = FeatureStore(fs_store_path)
    s = fs.extract([images], backbone="timm:test_vit", weights=str(fs_tiny_timm_vit), layers="last2", dense=True, workers=0)
    card = fs.card(s.table)
    assert card.layers == [4, 5] and card.dim == 128 and card.patch_dim is None
    lay = card.token_layout
    assert (lay.grid_h, lay.patch_size, lay.num_prefix_tokens) == (10, 16, 1)
    model = reference_model("test_vit", fs_tiny_timm_vit)
    for p, r in rows_by_path(fs, s.table).items():
        px = reference_pixels(model, p)
        with torch.no_grad():
            outs = model.forward_intermediates(px, indices=[4, 5], norm=True, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
            final = model.forward_features(px)[0]  # (101, 64): norm(last block)
        cls = torch.cat([pre[0, 0] for _, pre in outs])
        np.testing.assert_allclose(np.asarray(r["cls"], np.float32), cls.numpy(), atol=1e-4)
        # the last block after the final norm is what forward_features returns
        np.testing.assert_allclose(np.asarray(r["cls"], np.float32)[64:], final[0].numpy(), atol=1e-4)
        patches = torch.cat([sp[0] for sp, _ in outs], dim=-1)  # (100, 128)
        np.testing.assert_allclose(np.asarray(r["patches"], np.float32), patches.half().float().numpy(), rtol=2**-10, atol=1e-3)


def test_layer_choice_is_in_the_hash_and_negative_indices_resolve(fs_tiny_timm_resnet, images, fs_store_path):
    fs = FeatureStore(fs_store_path)
    w = str(fs_tiny_timm_resnet)
    default = fs.extract([images], backbone="timm:test_resnet", weights=w, workers=0)
    last_neg = fs.extract([images], backbone="timm:test_resnet", weights=w, layers="-1", workers=0)
    last_abs = fs.extract([images], backbone="timm:test_resnet", weights=w, layers=[4], workers=0)
    third = fs.extract([images], backbone="timm:test_resnet", weights=w, layers=[3], workers=0)
    assert last_neg.model_hash == last_abs.model_hash and last_abs.written == 0 and last_abs.skipped_existing == 3
    assert len({default.model_hash, last_neg.model_hash, third.model_hash}) == 3
    # test_resnet's last stage is its final feature map: same mean, but a different output spec, so another table
    a = {r["id"]: r["cls"] for r in fs.table(default.table).to_arrow().to_pylist()}
    b = {r["id"]: r["cls"] for r in fs.table(last_neg.table).to_arrow().to_pylist()}
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def test_layers_out_of_range_name_the_model(fs_tiny_timm_resnet, images, fs_store_path):
    with pytest.raises(ConfigError) as info:
        FeatureStore(fs_store_path).extract([images], backbone="timm:test_resnet", weights=str(fs_tiny_timm_resnet), layers=[5], workers=0)
    assert "timm:test_resnet" in str(info.value) and "5 blocks" in str(info.value)
