"""Model and table-version pinning: resolve a model reference, a version or tag; list and tag versions.

Kept free of torch (unlike :mod:`featurestore.readers`, which re-exports these), so
``featurestore versions`` and ``featurestore tag`` start without loading it.
"""

from __future__ import annotations

from typing import Any

from featurestore.config import ModelCard
from featurestore.errors import ConfigError, UnknownModelError
from featurestore.store import Store


def _store_path(store: Any) -> str:
    """A path from a path, a :class:`Store` or a :class:`~featurestore.api.FeatureStore`."""
    inner = getattr(store, "store", store)  # FeatureStore wraps a Store
    return str(inner.path) if isinstance(inner, Store) else str(store)


def resolve_model(store: Store, model: str, expected_hash: str | None = None) -> ModelCard:
    """The card of ``model`` (table name, hash, hash prefix or backbone name), checked
    against ``expected_hash`` (a full hash or a prefix of at least 6 hex digits).

    Raises:
        UnknownModelError: No such model, several match, or the hash is not the expected one.
        ConfigError: ``expected_hash`` is not hex or too short.
    """
    if expected_hash is None:
        return store.card(model)
    want = expected_hash.strip().lower()
    if len(want) < 6 or any(c not in "0123456789abcdef" for c in want):
        raise ConfigError(
            f"expected hash {expected_hash!r} is not a hash prefix. Fix: pass at least 6 hex digits "
            "of the model hash (see `featurestore models`)."
        )
    cards = store.cards()
    named = [c for c in cards if model in (c.model_hash, c.table, c.backbone) or (len(model) >= 6 and c.model_hash.startswith(model))]
    if not named:
        store.card(model)  # raises with the list of known models
    hits = [c for c in named if c.model_hash.startswith(want)]
    if len(hits) == 1:
        return hits[0]
    found = ", ".join(f"{c.model_hash[:16]}… (table {c.table}, backbone {c.backbone})" for c in named)
    if hits:
        raise UnknownModelError(f"expected hash {want!r} matches {len(hits)} models: {found}. Fix: pass a longer prefix.")
    raise UnknownModelError(
        f"model {model!r} in store {store.path} has hash {found}, not the expected {want}…: its features "
        "come from other weights, preprocessing or output spec. Fix: extract with the expected model, "
        "or pin the hash that was found if that is the model you want."
    )


def resolve_version(table: Any, version: int | str | None) -> tuple[int, str | None]:
    """``(version number, tag or None)`` for a version number, a tag name or None (the latest).

    Raises:
        ConfigError: The version does not exist (or was cleaned up), or no such tag.
    """
    latest = int(table.version)
    if version is None:
        return latest, None
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise ConfigError(f"version {version!r} is neither a version number nor a tag name.")
    if isinstance(version, str):
        tags = table.tags.list()
        if version not in tags:
            known = ", ".join(f"{k} (v{v['version']})" for k, v in sorted(tags.items())) or "none"
            raise ConfigError(
                f"table {table.name} has no tag {version!r} (tags: {known}). "
                f"Fix: pass a version number (1..{latest}) or tag one with `featurestore tag NAME -s STORE -m MODEL --version N`."
            )
        return int(tags[version]["version"]), version
    have = {int(v["version"]) for v in table.list_versions()}
    if version not in have:
        raise ConfigError(
            f"table {table.name} has no version {version} (it has {min(have)}..{max(have)}, "
            f"{len(have)} kept). Fix: pass one of them, or a tag."
        )
    return version, None


def tag_version(store: Any, model: str, name: str, version: int | None = None) -> int:
    """Tag ``version`` (default: the latest) of ``model``'s table as ``name``; returns it.

    Tagged versions survive ``cleanup_old_versions``, so a tag is a durable pin for readers.
    """
    st = Store(_store_path(store))
    table = st.open_table(st.card(model).table)
    v, _ = resolve_version(table, version)
    if name in table.tags.list():
        raise ConfigError(f"table {table.name} already has a tag {name!r}. Fix: choose another name.")
    table.tags.create(name, v)
    return v


def table_versions(store: Any, model: str) -> dict[str, Any]:
    """The versions (number, timestamp, rows) and tags of ``model``'s table."""
    st = Store(_store_path(store))
    card = st.card(model)
    table = st.open_table(card.table)
    versions = [
        {"version": int(v["version"]), "timestamp": v["timestamp"], "rows": int(v["metadata"].get("total_rows", -1))}
        for v in table.list_versions()
    ]
    tags = {k: int(v["version"]) for k, v in table.tags.list().items()}
    return {"table": card.table, "model_hash": card.model_hash, "latest": int(table.version), "versions": versions, "tags": tags}
