"""featurestore.hub: one bounded probe of the hub, a fast failure with the fix, the cache when offline.

Real sockets on 127.0.0.1 stand in for the hub (a server that accepts and never answers,
one that answers, a port where nothing listens); real cache directories in the layout
huggingface_hub reads. Nothing here times anything: what is checked is how often the
endpoint was contacted and what the error says.
"""

from __future__ import annotations

import pytest

from featurestore import hub
from featurestore.errors import ConfigError, WeightsNotFoundError
from featurestore.testing import LoopbackHub, closed_port_url, hub_env, put_in_hub_cache, run_cli_fresh, write_images


@pytest.fixture
def online_env(monkeypatch, tmp_path):
    """No offline variables, no proxy, an empty hub cache."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FEATURESTORE_HUB_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_silent_endpoint_is_unreachable_and_probed_once(online_env, monkeypatch, fs_silent_hub):
    monkeypatch.setenv("HF_ENDPOINT", fs_silent_hub.url)
    monkeypatch.setenv("FEATURESTORE_HUB_TIMEOUT", "0.5")
    reason = hub.unreachable_reason()
    assert reason is not None and "did not answer" in reason and "127.0.0.1" in reason
    assert hub.unreachable_reason() == reason  # cached for the process: no second connection
    assert fs_silent_hub.connections == 1


def test_closed_port_is_unreachable(online_env, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    reason = hub.unreachable_reason()
    assert reason is not None and "cannot connect" in reason and url.rsplit(":", 1)[1] in reason


def test_answering_endpoint_is_reachable(online_env, monkeypatch):
    server = LoopbackHub(answer=True)
    try:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert hub.unreachable_reason() is None
        assert hub.why_offline() is None
        with hub.access("hf:acme/x", "acme/x"):  # reachable: nothing is checked or changed
            import huggingface_hub.constants

            assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    finally:
        server.close()
    assert server.connections == 1


def test_probe_off_makes_no_connection(online_env, monkeypatch, fs_silent_hub):
    monkeypatch.setenv("HF_ENDPOINT", fs_silent_hub.url)
    monkeypatch.setenv("FEATURESTORE_HUB_TIMEOUT", "0")
    assert hub.unreachable_reason() is None
    assert fs_silent_hub.connections == 0


def test_bad_probe_timeout_is_a_config_error(monkeypatch):
    monkeypatch.setenv("FEATURESTORE_HUB_TIMEOUT", "soon")
    with pytest.raises(ConfigError) as info:
        hub.probe_timeout()
    assert "'soon'" in str(info.value) and "or 0 to skip the hub probe" in str(info.value)


def test_proxy_is_probed_instead_of_the_hub(online_env, monkeypatch, fs_silent_hub):
    proxy = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", fs_silent_hub.url)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    reason = hub.unreachable_reason()
    assert reason is not None and "proxy" in reason
    assert fs_silent_hub.connections == 0


def test_unreachable_and_not_cached_names_backbone_repo_and_fix(online_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(WeightsNotFoundError) as info:
        hub.check("dinov2_vits14", "facebook/dinov2-small")
    msg = str(info.value)
    assert "'dinov2_vits14'" in msg and "facebook/dinov2-small" in msg and "cannot be reached" in msg
    assert "hf download facebook/dinov2-small --local-dir DIR" in msg and "--weights DIR" in msg
    assert "HF_HUB_OFFLINE=1" in msg and str(online_env) in msg


def test_unreachable_and_cached_loads_offline(online_env, monkeypatch, tmp_path, fs_silent_hub):
    monkeypatch.setenv("HF_ENDPOINT", fs_silent_hub.url)
    monkeypatch.setenv("FEATURESTORE_HUB_TIMEOUT", "0.5")
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text("{}")
    put_in_hub_cache(online_env, "acme/cached", files)
    assert hub.is_cached("acme/cached") and not hub.is_cached("acme/other")
    import huggingface_hub.constants

    with hub.access("hf:acme/cached", "acme/cached"):
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # the libraries use the cache only
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert fs_silent_hub.connections == 1


def test_offline_variable_fails_at_once_without_a_probe(online_env, monkeypatch, fs_silent_hub):
    monkeypatch.setenv("HF_ENDPOINT", fs_silent_hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        hub.check("resnet50", "timm/resnet50.a1_in1k")
    assert "HF_HUB_OFFLINE is set" in str(info.value)
    assert fs_silent_hub.connections == 0
    hub.check("timm:resnet50", "timm/resnet50.*", guess=True)  # a guess defers to the library offline


def test_wildcard_matches_any_tag(online_env, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "model.safetensors").write_bytes(b"x")
    put_in_hub_cache(online_env, "timm/resnet18.a1_in1k", files)
    assert hub.is_cached("timm/resnet18.*")
    assert not hub.is_cached("timm/resnet1.*") and not hub.is_cached("timm/resnet18d.*")


# -- through the CLI, in a fresh process: what it imports, how often it calls --------------


@pytest.mark.slow  # fresh interpreters
def test_cli_uncached_hub_model_fails_before_importing_torch(tmp_path, fs_silent_hub):
    write_images(tmp_path / "img", 1)
    args = ["extract", str(tmp_path / "img"), "-b", "hf:acme/nowhere", "-s", str(tmp_path / "s")]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert (got["rc"], got["imported"]) == (2, []), err
    assert "'hf:acme/nowhere'" in err and "hf download acme/nowhere --local-dir DIR" in err and "Traceback" not in err
    assert fs_silent_hub.connections == 1  # the probe; no library request, no retry


@pytest.mark.slow  # fresh interpreters
def test_cli_cached_hub_model_loads_with_the_hub_silent(tmp_path, fs_silent_hub, fs_tiny_dinov2):
    write_images(tmp_path / "img", 2)
    put_in_hub_cache(tmp_path / "hf-cache", "acme/tiny-dinov2", fs_tiny_dinov2)
    args = ["extract", str(tmp_path / "img"), "-b", "hf:acme/tiny-dinov2", "-s", str(tmp_path / "s"), "--workers", "0"]
    got, err = run_cli_fresh(args, hub_env(tmp_path / "hf-cache", fs_silent_hub.url))
    assert got["rc"] == 0, err
    assert fs_silent_hub.connections == 1  # only the probe: the files came from the cache
