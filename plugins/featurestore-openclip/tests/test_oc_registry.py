"""The registered names' dims, widths, grids and tags match open_clip's own configs.

Architectures are instantiated on the ``meta`` device: shapes without weights or downloads.
"""

from __future__ import annotations

import pytest
import torch

from featurestore_openclip.plugin import NAMED

BUILTIN = {k: v for k, v in NAMED.items() if not v[0].startswith("hf-hub:")}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_named_backbone_matches_open_clip(name):
    import open_clip

    model_name, tag, dim, width, size, patch, _ = NAMED[name]
    assert tag in open_clip.list_pretrained_tags_by_model(model_name)
    cfg = open_clip.get_model_config(model_name)
    assert cfg["embed_dim"] == dim
    with torch.device("meta"):
        model = open_clip.create_model(model_name, load_weights=False, device="meta")
    visual = model.visual
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        got = (trunk.embed_dim, trunk.patch_embed.img_size[0], trunk.patch_embed.patch_size[0])
        assert trunk.cls_token is None  # SigLIP: no CLS token, the MAP head stands in
    else:
        got = (visual.conv1.out_channels, visual.image_size[0], visual.patch_size[0])
    assert got == (width, size, patch)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_hub_repos_are_open_clips_own(name):
    """featurestore_openclip.plugin.HUB_REPOS: what an offline run looks for in the cache before importing open_clip."""
    import open_clip

    from featurestore_openclip.plugin import HUB_REPOS

    model_name, tag = NAMED[name][:2]
    if tag is None:  # hf-hub:<repo>: the repository is the name
        assert HUB_REPOS[name] == (model_name.removeprefix("hf-hub:"),)
        return
    repos = [open_clip.get_pretrained_cfg(model_name, tag)["hf_hub"].strip("/")]
    tokenizer = open_clip.get_model_config(model_name)["text_cfg"].get("hf_tokenizer_name")
    if tokenizer:
        repos.append(tokenizer)
    assert HUB_REPOS[name] == tuple(repos)
