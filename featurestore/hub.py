"""Is the Hugging Face hub reachable? Fail fast, or load from the local cache, when it is not.

With the hub out of reach, transformers, timm and open_clip each try every file a few
times with back-off (huggingface_hub retries a failed request 5 times, 1 + 2 + 4 + 8 + 8 s
apart): a named backbone failed only after 35-60 s. The plugins call :func:`access`
around a hub load instead:

* ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``): the cache only, as the libraries
  do themselves; a repository that is not in the cache fails at once, before any model
  library is imported.
* otherwise one probe, once per process: does anything answer at the ``HF_ENDPOINT``
  host (or the proxy for it) within :data:`DEFAULT_TIMEOUT` s? One connection and, for
  ``https``, a TLS handshake (for ``http``, the first byte of an answer to ``HEAD /``), so
  a host that accepts connections and never answers counts as unreachable too.
  Reachable: nothing changes. Unreachable: a repository that is not in the local cache
  fails at once with the fix; one that is loads from the cache, with huggingface_hub in
  offline mode for the duration of the load (no request, no retry).

``FEATURESTORE_HUB_TIMEOUT`` sets the probe's time limit in seconds; ``0`` turns the probe
off (the libraries' own timeouts and retries apply again). This module imports no model
library, and huggingface_hub only when a load runs with the hub unreachable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from featurestore.errors import ConfigError, WeightsNotFoundError

DEFAULT_ENDPOINT = "https://huggingface.co"
ENV_TIMEOUT = "FEATURESTORE_HUB_TIMEOUT"
#: seconds for DNS + connect + TLS handshake; the hub's own answer usually takes 0.1-0.4 s
DEFAULT_TIMEOUT = 2.0

_TRUE = {"1", "on", "yes", "true"}
_PROBES: dict[tuple[str, str | None], str | None] = {}  # (endpoint, proxy) -> reason, per process
_LOCK = threading.Lock()


def endpoint() -> str:
    """The hub the libraries talk to: ``HF_ENDPOINT``, default ``https://huggingface.co``."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_requested() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` asks for the cache only.

    Also when huggingface_hub, already imported, was put in offline mode (it reads the
    variables once, at import).
    """
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def probe_timeout() -> float:
    """The probe's time limit (``FEATURESTORE_HUB_TIMEOUT``; 0 means: do not probe)."""
    text = os.environ.get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigError(f"{ENV_TIMEOUT}={text!r} is not a number of seconds. Fix: e.g. {ENV_TIMEOUT}=2, or 0 to skip the hub probe.")
    return value


def _proxy_for(url: str) -> str | None:
    """The proxy URL httpx would use for ``url`` (``HTTPS_PROXY`` … minus ``NO_PROXY``), if any."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default


def _probe(url: str, proxy: str | None, timeout: float) -> str | None:
    """None when something answers at ``url`` (or its proxy) within ``timeout`` s, else why not."""
    host, port = _address(proxy or url)
    what = f"proxy {host}:{port}" if proxy else f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    except OSError as exc:
        return f"cannot connect to {what}: {exc.strerror or exc}"
    with sock:
        if proxy:  # the proxy speaks for the hub; asking it (CONNECT) would be another protocol
            return None
        try:
            if urlsplit(url).scheme == "https":
                # only "does anything answer": no certificate check, nothing is sent over it
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(sock, server_hostname=host):
                    return None
            sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return None if sock.recv(1) else f"{what} closed the connection without an answer"
        except socket.timeout:
            return f"{what} accepted a connection but did not answer within {timeout:g} s"
        except OSError as exc:
            return f"{what} did not answer: {exc}"


def unreachable_reason() -> str | None:
    """None when the hub answers, else why not; probed once per process (and endpoint/proxy).

    The probe runs in a daemon thread: a DNS lookup, which no socket timeout covers, cannot
    hold the caller longer than the time limit. Always None when the probe is off.
    """
    timeout = probe_timeout()
    if timeout == 0:
        return None
    url = endpoint()
    proxy = _proxy_for(url)
    key = (url, proxy)
    with _LOCK:
        if key in _PROBES:
            return _PROBES[key]
        result: list[str | None] = []
        thread = threading.Thread(target=lambda: result.append(_probe(url, proxy, timeout)), daemon=True)
        thread.start()
        thread.join(timeout + 0.25)
        reason = result[0] if result else f"no answer from {urlsplit(url).hostname} within {timeout:g} s"
        _PROBES[key] = reason
        return reason


def cache_dir() -> Path:
    """The hub cache the libraries read (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub).

    huggingface_hub's own value, which it fixes when first imported: the one every library uses.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub library, so nothing could have been cached by one
        home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
        return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser()
    return Path(constants.HF_HUB_CACHE).expanduser()


def is_cached(repo_id: str) -> bool:
    """Whether the local hub cache holds a snapshot of model repository ``repo_id``.

    Reads the cache layout huggingface_hub documents (``models--org--name/snapshots/<rev>/``);
    a snapshot with at least one file counts. Whether it holds every file a library needs is
    for that library to say, offline, at once. ``*`` in ``repo_id`` matches any characters
    (``timm/resnet18.*``: any tag).
    """
    folder = "models--" + repo_id.strip("/").replace("/", "--")
    try:
        repos = sorted(cache_dir().glob(folder)) if "*" in folder else [cache_dir() / folder]
        return any(any(rev.iterdir()) for repo in repos for rev in (repo / "snapshots").iterdir() if rev.is_dir())
    except OSError:
        return False


def why_offline() -> str | None:
    """Why only the cache can be used now (HF_HUB_OFFLINE, or the probe's reason), or None."""
    if offline_requested():
        return "HF_HUB_OFFLINE is set, so only the local cache is used"
    reason = unreachable_reason()
    return None if reason is None else f"the hub at {endpoint()} cannot be reached ({reason})"


def offline_error(backbone: str, repo_id: str, why: str, *, other_fix: str | None = None) -> WeightsNotFoundError:
    """The error for a repository that is neither reachable nor cached: the backbone, the repo, the fix
    (``other_fix``: one more way a plugin accepts weights, e.g. ``--weights FILE.safetensors``)."""
    also = f" {other_fix};" if other_fix else ""
    return WeightsNotFoundError(
        f"backbone {backbone!r} needs {repo_id!r} from the Hugging Face hub, but {why}, and it is not in the "
        f"local cache ({cache_dir()}). Fix: on a machine with network run `hf download {repo_id} --local-dir DIR`, "
        f"copy DIR here and pass --weights DIR;{also} or copy that machine's hub cache into HF_HOME here and set "
        f"HF_HUB_OFFLINE=1 to load from the cache only."
    )


def check(backbone: str, repo_id: str, *, guess: bool = False, label: str | None = None, other_fix: str | None = None) -> None:
    """Raise at once when the hub cannot be used and ``repo_id`` is not cached.

    Args:
        backbone: the backbone name, for the message.
        repo_id: the hub repository (``*`` matches any characters, see :func:`is_cached`).
        guess: ``repo_id`` is inferred from the backbone name, so it may miss weights that a
            library finds under another name: checked only when the hub is unreachable,
            not under HF_HUB_OFFLINE, where the library's own offline look-up runs instead.
        label: how the message names the repository (default ``repo_id``), e.g.
            ``timm/resnet18.<tag>`` for ``timm/resnet18.*``.
        other_fix: one more way the plugin takes weights, said in the message.

    Raises:
        WeightsNotFoundError: HF_HUB_OFFLINE is set or the hub is unreachable, and the
            local cache has no snapshot of ``repo_id``.
    """
    if guess and offline_requested():
        return
    why = why_offline()
    if why is not None and not is_cached(repo_id):
        err = offline_error(backbone, label or repo_id, why, other_fix=other_fix)
        if guess:  # say so: a misspelt name ends here too, unchecked
            err = WeightsNotFoundError(
                f"{err} (The repository was inferred from the name, which was not checked: with HF_HUB_OFFLINE=1 the "
                f"model library checks the name and looks up its own repository in the cache.)"
            )
        raise err


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """huggingface_hub in offline mode while the block runs (it reads HF_HUB_OFFLINE at import
    only; every request checks the module constant, so this is what the variable would do)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def access(backbone: str, repo_id: str | None = None, *, other_fix: str | None = None) -> Iterator[None]:
    """Run a load that may fetch ``repo_id`` from the hub: fail fast, or use the cache only,
    when the hub is unreachable (see the module docstring).

    ``repo_id`` None: the repository is not known before the model library is imported;
    the load then only runs in offline mode when the hub is unreachable.

    Raises:
        WeightsNotFoundError: the hub cannot be used and ``repo_id`` is not cached.
    """
    if repo_id is not None:
        check(backbone, repo_id, other_fix=other_fix)
    if offline_requested() or unreachable_reason() is None:
        yield
        return
    with _hf_offline():
        yield


__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_TIMEOUT",
    "ENV_TIMEOUT",
    "access",
    "cache_dir",
    "check",
    "endpoint",
    "is_cached",
    "offline_error",
    "offline_requested",
    "unreachable_reason",
    "why_offline",
]
