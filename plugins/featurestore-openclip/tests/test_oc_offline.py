"""The hub out of reach (a loopback server that accepts connections and never answers):
named backbones fail at once with the fix; cached hub models load from the cache."""

from __future__ import annotations

import pytest

from featurestore.testing import hub_env, put_in_hub_cache, run_cli_fresh, write_images


def test_unreachable_hub_named_backbone_fails_before_importing_open_clip(tmp_path, fs_silent_hub):
    write_images(tmp_path / "img", 1)
    args = ["extract", str(tmp_path / "img"), "-b", "clip_vitb32_openai", "-s", str(tmp_path / "s")]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert (got["rc"], got["imported"]) == (2, []), err
    assert "backbone 'clip_vitb32_openai' needs 'timm/vit_base_patch32_clip_224.openai'" in err
    assert "--weights DIR" in err and "HF_HUB_OFFLINE=1" in err
    assert fs_silent_hub.connections == 1


@pytest.mark.slow  # fresh interpreters
def test_unreachable_hub_loads_a_cached_hf_hub_model(tmp_path, fs_silent_hub, fs_tiny_openclip):
    put_in_hub_cache(tmp_path / "hf-cache", "acme/tiny-clip", fs_tiny_openclip)
    write_images(tmp_path / "img", 2)
    args = ["extract", str(tmp_path / "img"), "-b", "open_clip:hf-hub:acme/tiny-clip", "-s", str(tmp_path / "s"), "--workers", "0"]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert got["rc"] == 0, err
    assert fs_silent_hub.connections == 1  # the probe; config, weights and tokenizer came from the cache
