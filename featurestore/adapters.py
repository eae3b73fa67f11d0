"""Fitting, saving and applying domain adapters over stored features.

An adapter (a plugin's :class:`featurestore.adapter.Adapter`) is fitted on the ``cls``
vectors of one model's table. Its tensors are saved as ``_adapters/<hash>.safetensors``
inside the store and its :class:`AdapterCard` as a row of the ``adapters`` table, where

    adapter hash = SHA-256(base model hash, adapter name + params + version, fitted tensors)

so refitting the same adapter on the same rows gives the same hash, and the same adapter
fitted on another model's features never shares one. Applying it writes a table keyed by
that hash, registered in ``models`` with a card whose ``adapter`` field names the base
model: readers and search take it like any model, and ``featurestore models`` shows the
chain. Float adapters write ``cls`` (and ``patches`` when the base table is dense with the
same width); integer-coded adapters (quantizers) write ``codes``, decoded on read.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from featurestore.adapter import OUT_DTYPES, Adapter
from featurestore.clips import parse_spec
from featurestore.commit import Committer, MaintainPolicy, StoredIds
from featurestore.config import AdapterCard, ModelCard
from featurestore.errors import ConfigError, StoreError, UnknownModelError
from featurestore.hashing import model_hash, weights_sha256
from featurestore.store import Store, feature_schema, table_name_for
from featurestore.writer import TableWriter

ADAPTERS_TABLE = "adapters"
ARTIFACT_DIR = "_adapters"
_ARROW_INT = {"int8": pa.int8(), "uint8": pa.uint8()}

ADAPTERS_SCHEMA = pa.schema(
    [
        pa.field("adapter_hash", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("base_model_hash", pa.string()),
        pa.field("card", pa.string()),  # the full AdapterCard as JSON
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


# -- building adapters -----------------------------------------------------------------


def parse_adapter(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value[,key=value]`` (values are JSON literals when they parse)."""
    return parse_spec(text, "adapter", "project:dim=64", "pca-whiten, quantize")


def build_adapter(name: str, params: dict[str, Any]) -> tuple[Adapter, Any]:
    """An unfitted adapter from its plugin, and the registry entry that made it."""
    from featurestore.plugins import get_host

    entry = get_host().adapters.get(name)
    adapter = entry.factory(name, **params)
    if not isinstance(adapter, Adapter):
        raise ConfigError(
            f"plugin {entry.plugin!r} returned {type(adapter).__name__} for adapter {name!r}, "
            "not a featurestore.adapter.Adapter. Fix: report this to the plugin's authors."
        )
    return adapter, entry


def _state_digest(state: dict[str, np.ndarray]) -> str:
    import torch  # here only: `featurestore manifest` imports this module for its table names

    return weights_sha256((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items())


def _plugin_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# -- catalog ---------------------------------------------------------------------------


def adapter_cards(store: Store) -> list[AdapterCard]:
    """Every fitted adapter of the store, oldest first (once each, also when an older version
    stored its row twice: ``featurestore doctor --repair`` removes the copy)."""
    if ADAPTERS_TABLE not in store.table_names():
        return []
    # the whole catalog, in memory: one row per fitted adapter (bounded by the fits, not the images)
    rows = store.db.open_table(ADAPTERS_TABLE).to_arrow().sort_by("created_at").to_pylist()
    first = {r["adapter_hash"]: r for r in reversed(rows)}  # the earliest row of each hash wins
    return [AdapterCard.model_validate_json(r["card"]) for r in rows if first[r["adapter_hash"]] is r]


def adapter_card(store: Store, ref: str) -> AdapterCard:
    """Find a fitted adapter by hash, hash prefix (>= 6 hex), table name, or name when one fit has it."""
    cards = adapter_cards(store)
    exact = [c for c in cards if ref in (c.adapter_hash, c.table)]
    if exact:
        return exact[0]
    matches = [c for c in cards if (len(ref) >= 6 and c.adapter_hash.startswith(ref)) or c.name == ref]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(f"{c.adapter_hash[:12]} ({c.name} {c.params} on {c.base_table})" for c in matches)
        raise UnknownModelError(f"adapter {ref!r} matches {len(matches)} fitted adapters: {listed}. Fix: pass a hash prefix.")
    known = ", ".join(f"{c.adapter_hash[:12]} ({c.name})" for c in cards) or "none yet: run featurestore adapt fit"
    raise UnknownModelError(f"no fitted adapter {ref!r} in store {store.path} ({known}).")


def load_fitted(store: Store, card: AdapterCard) -> Adapter:
    """The fitted adapter of ``card``, its tensors checked against the card's digest."""
    from safetensors.numpy import load_file

    path = Path(store.path) / card.artifact
    if not path.is_file():
        raise StoreError(f"the tensors of adapter {card.adapter_hash[:12]} ({card.name}) are missing: {path}. Fix: fit it again.")
    state = load_file(str(path))
    if _state_digest(state) != card.state_sha256:
        raise StoreError(
            f"the tensors in {path} do not match adapter {card.adapter_hash[:12]}'s card (changed after fitting?). "
            "Fix: fit it again."
        )
    adapter, _ = build_adapter(card.name, card.params)
    adapter.load_state(state)
    return adapter


# -- fitting ---------------------------------------------------------------------------


def _fit_rows(store: Store, base: ModelCard, adapter: Adapter, where: str | None, labels: str | Path | None, max_rows: int | None):
    from featurestore.probe import class_order, read_label_file
    from featurestore.readers import FeatureDataset

    y = classes = None
    if adapter.needs_labels:
        if labels is None:
            raise ConfigError(f"adapter {adapter.name!r} is trained on labels. Fix: --labels FILE (.csv/.parquet with id or uri, and label).")
        lab, key = read_label_file(labels)
        ds = FeatureDataset(store, base.table, columns=["cls"], where=where, labels=lab, label_key=key, label_columns=["label"], drop_missing_labels=True)
    else:
        ds = FeatureDataset(store, base.table, columns=["cls"], where=where)
    if len(ds) == 0:
        what = f" matching {where!r}" if where else ""
        extra = " that have a label" if adapter.needs_labels else ""
        raise ConfigError(f"table {base.table} has no rows{what}{extra} to fit adapter {adapter.name!r} on.")
    if max_rows is not None and len(ds) > max_rows:
        # a seeded subset in row order: the same store and arguments give the same fit rows
        pick = np.sort(np.random.default_rng(0).choice(len(ds), max_rows, replace=False))
        ids = [ds.ids[i] for i in pick]
        if adapter.needs_labels:
            ds = FeatureDataset(store, base.table, columns=["cls"], version=ds.version, ids=ids, labels=lab, label_key=key, label_columns=["label"])
        else:
            ds = FeatureDataset(store, base.table, columns=["cls"], version=ds.version, ids=ids)
    got = ds.to_numpy(["cls", "label"] if adapter.needs_labels else ["cls"])
    x = got["cls"].astype(np.float32, copy=False)
    if adapter.needs_labels:
        names = [str(v) for v in got["label"]]
        classes = class_order(names)
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[n] for n in names], np.int64)
    return x, y, classes, ds.version


def fit_adapter(
    store: Store,
    model: str,
    adapter_text: str,
    *,
    where: str | None = None,
    labels: str | Path | None = None,
    max_rows: int | None = None,
) -> AdapterCard:
    """Fit ``adapter_text`` (``NAME[:k=v,…]``) on the ``cls`` rows of ``model`` and save it.

    Returns the card, also written to the ``adapters`` table (once per hash: refitting the
    same adapter on the same rows changes nothing).

    Raises:
        ConfigError: unknown adapter or parameters, no rows, labels missing, a base table
            that is itself adapted.
    """
    base = store.card(model)
    if base.adapter is not None:
        raise ConfigError(
            f"{base.table} holds adapted features (adapter {base.adapter.name} on {base.adapter.base_table}). "
            f"Fix: fit adapters on a model's own features, e.g. --model {base.adapter.base_table}."
        )
    name, params = parse_adapter(adapter_text)
    adapter, entry = build_adapter(name, params)
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"--max-rows {max_rows}: must be at least 1.")
    x, y, classes, version = _fit_rows(store, base, adapter, where, labels, max_rows)
    metrics = adapter.fit(x, y, classes)
    state = {k: np.ascontiguousarray(v) for k, v in adapter.state().items()}
    digest = _state_digest(state)
    spec = adapter.spec()
    ahash = model_hash(digest, {"adapter": spec, "base_model_hash": base.model_hash})
    out_dtype = adapter.out_dtype()
    if out_dtype not in OUT_DTYPES:
        raise ConfigError(f"adapter {name!r} says its output dtype is {out_dtype!r}, not one of {OUT_DTYPES} (a plugin bug).")
    if adapter.in_dim() != base.dim:
        raise ConfigError(f"adapter {name!r} fitted to width {adapter.in_dim()}, but {base.table}'s cls is {base.dim} wide (a plugin bug).")
    pwidth = base.patch_dim if base.patch_dim is not None else base.dim
    artifact = f"{ARTIFACT_DIR}/{ahash}.safetensors"
    _save_state(Path(store.path) / artifact, state)
    card = AdapterCard(
        adapter_hash=ahash,
        name=name,
        params=spec["params"],
        version=spec["version"],
        plugin=entry.plugin,
        plugin_version=_plugin_version(entry.plugin),
        base_model_hash=base.model_hash,
        base_table=base.table,
        base_backbone=base.backbone,
        fit_rows=len(x),
        fit_version=version,
        fit_where=where,
        labels_file=str(labels) if labels is not None else None,
        classes=adapter.classes(),
        in_dim=adapter.in_dim(),
        out_dim=adapter.out_dim(),
        out_dtype=out_dtype,
        invertible=adapter.invertible,
        patches=base.dense and pwidth == adapter.in_dim() and out_dtype == "float32",
        artifact=artifact,
        state_sha256=digest,
        metrics=metrics,
        table=table_name_for(f"{base.backbone}+{name}", ahash),
        created_at=datetime.now(timezone.utc),
    )
    row = pa.Table.from_pylist(
        [{"adapter_hash": ahash, "name": name, "base_model_hash": base.model_hash, "card": card.model_dump_json(), "created_at": card.created_at}],
        schema=ADAPTERS_SCHEMA,
    )
    tbl = store._open_or_create(ADAPTERS_TABLE, ADAPTERS_SCHEMA)
    Committer(tbl, key="adapter_hash", policy=MaintainPolicy(enabled=False), index=False).commit(row)  # under the table's lock
    return adapter_card(store, ahash)  # the stored card (an earlier identical fit keeps its date)


def _save_state(path: Path, state: dict[str, np.ndarray]) -> None:
    """Write atomically: a crash leaves the old file or none, never half of one."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- the adapted table -----------------------------------------------------------------


def adapted_schema(card: AdapterCard) -> pa.Schema:
    """A feature table's columns, with ``cls`` (and ``patches``) replaced by the adapter's output.
    Other columns of the base (cluster assignments …) describe base rows, not adapted ones."""
    out = feature_schema(card.out_dim, card.patches)
    fields = list(out)
    if card.out_dtype != "float32":
        i = out.get_field_index("cls")
        fields[i] = pa.field("codes", pa.list_(_ARROW_INT[card.out_dtype], card.out_dim))
    return pa.schema(fields)


def adapted_model_card(base: ModelCard, card: AdapterCard) -> ModelCard:
    """The model card of the adapted table: the base's provenance, the adapter's output."""
    data = base.model_dump()
    data.update(
        model_hash=card.adapter_hash,
        backbone=f"{base.backbone}+{card.name}",
        table=card.table,
        dim=card.in_dim if card.out_dtype != "float32" else card.out_dim,  # codes decode to in_dim
        patch_dim=None,
        layers=None,
        layer_dims=None,
        text_dim=None,  # text embeddings live in the base space
        dense=card.patches,
        token_layout=base.token_layout.model_dump() if (card.patches and base.token_layout) else None,
        cls_dtype=card.out_dtype,
        patch_dtype="float16" if card.patches else None,
        created_at=card.created_at,
        adapter=card.model_dump(),
    )
    return ModelCard.model_validate(data)


def adapt_rows(adapter: Adapter, card: AdapterCard, schema: pa.Schema, rows: pa.Table) -> pa.Table:
    """Base feature rows (Arrow, as stored) → adapted rows in ``schema``."""
    cls = rows.column("cls").combine_chunks()
    x = cls.flatten().to_numpy(zero_copy_only=False).reshape(len(cls), cls.type.list_size)  # (B, D)
    y = np.ascontiguousarray(adapter.transform(x.astype(np.float32, copy=False)))  # (B, out)
    if y.shape != (len(x), card.out_dim) or y.dtype != np.dtype(card.out_dtype):
        raise RuntimeError(
            f"adapter {card.name} returned {y.dtype}{tuple(y.shape)} for {len(x)} rows; its card says "
            f"{card.out_dtype}(n, {card.out_dim}) (a plugin bug)"
        )
    cols = {n: rows.column(n) for n in schema.names if n in rows.column_names and n not in ("cls", "patches")}
    if card.out_dtype == "float32":
        cols["cls"] = pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), card.out_dim)
    else:
        cols["codes"] = pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1), _ARROW_INT[card.out_dtype]), card.out_dim)
    if card.patches:
        p = rows.column("patches").combine_chunks()  # list<fixed_size_list<f16, D>>
        tokens = p.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, card.in_dim)  # (sum N, D)
        z = adapter.transform(tokens.astype(np.float32)).astype(np.float16)  # (sum N, out)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float16()), card.out_dim)
        cols["patches"] = pa.ListArray.from_arrays(p.offsets, inner)
    for f in schema:
        if f.name not in cols:
            cols[f.name] = pa.nulls(rows.num_rows, f.type)
    return pa.Table.from_pydict({n: cols[n] for n in schema.names}, schema=schema)


@dataclass
class ApplyResult:
    """What ``adapt apply`` did."""

    adapter_hash: str
    table: str
    base_table: str
    written: int
    skipped_existing: int
    rows: int
    base_version: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_base(card: AdapterCard, model: ModelCard) -> None:
    """An adapter applies only to the features of the model it was fitted on."""
    if model.model_hash != card.base_model_hash:
        raise ConfigError(
            f"adapter {card.adapter_hash[:12]} ({card.name}) was fitted on model {card.base_model_hash[:12]} "
            f"({card.base_table}), not on model {model.model_hash[:12]} ({model.table}): features of another model "
            f"live in another space. Fix: fit the adapter on {model.table} (featurestore adapt fit --model {model.table} …)."
        )


def open_adapted(store: Store, card: AdapterCard) -> tuple[ModelCard, Any]:
    """Register the adapted table (once) and return its model card and table."""
    base = store.card(card.base_model_hash)
    mcard = adapted_model_card(base, card)
    return mcard, store.register_model(mcard, schema=adapted_schema(card))


def _base_chunks(table: Any, columns: Sequence[str], stored: StoredIds, chunk: int) -> Iterator[tuple[pa.Table, int, int]]:
    """(base rows not adapted yet, how many of the chunk were, the adapted table's version
    they were checked at), a chunk at a time: an indexed lookup per chunk, no id set."""
    names = [c for c in columns if c in table.schema.names]
    for batch in table.search().select(names).limit(None).to_batches(chunk):
        t = pa.Table.from_batches([batch])
        ids = t.column("id").to_pylist()
        found, version = stored.check(ids)
        if found:
            t = t.filter(pa.array([v not in found for v in ids]))
        yield t, len(ids) - t.num_rows, version


def apply_adapter(store: Store, ref: str, *, model: str | None = None, chunk: int = 2048) -> ApplyResult:
    """Write the adapted features of every base row not yet in the adapted table.

    Args:
        ref: the adapter (hash, prefix, table or unique name).
        model: when given, the model the caller expects the adapter to apply to; another
            model than its base is an error naming both hashes.
        chunk: base rows per read and per commit.
    """
    card = adapter_card(store, ref)
    base = store.card(card.base_model_hash)
    if model is not None:
        check_base(card, store.card(model))
    adapter = load_fitted(store, card)
    mcard, table = open_adapted(store, card)
    base_table = store.open_table(base.table)
    skipped = 0
    wanted = list(dict.fromkeys([c for c in table.schema.names if c not in ("codes", "patches")] + ["cls"] + (["patches"] if card.patches else [])))
    # commits on a background thread while the next chunk is adapted; only unseen ids go in
    with TableWriter(table, label=card.table) as writer:
        for rows, n_stored, version in _base_chunks(base_table, wanted, StoredIds(store.path, card.table), chunk):
            skipped += n_stored
            if rows.num_rows:
                writer.put(adapt_rows(adapter, card, table.schema, rows), absent_at=version)
    skipped += writer.handed - writer.inserted  # adapted by a concurrent apply meanwhile
    table.checkout_latest()
    return ApplyResult(card.adapter_hash, card.table, base.table, writer.inserted, skipped, table.count_rows(), base_table.version)


def adapters_summary(store: Store) -> list[dict[str, Any]]:
    """One dict per fitted adapter, for ``featurestore adapt list``."""
    names = set(store.table_names())
    out = []
    for c in adapter_cards(store):
        out.append(
            {
                "adapter_hash": c.adapter_hash,
                "name": c.name,
                "params": c.params,
                "base_table": c.base_table,
                "table": c.table,
                "applied_rows": store.db.open_table(c.table).count_rows() if c.table in names else 0,
                "fit_rows": c.fit_rows,
                "out": f"{c.out_dtype}[{c.out_dim}]",
                "metrics": c.metrics,
            }
        )
    return out


__all__ = [
    "AdapterCard",
    "ApplyResult",
    "adapt_rows",
    "adapted_model_card",
    "adapter_card",
    "adapter_cards",
    "apply_adapter",
    "build_adapter",
    "check_base",
    "fit_adapter",
    "load_fitted",
    "open_adapted",
    "parse_adapter",
]
