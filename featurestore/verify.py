"""Drift verification: re-extract a sample of stored rows from their sources and compare.

``verify`` first checks that the weights found today are the ones the table was made with
(weight digest, then the model hash recomputed from today's preprocessing / output spec /
decode policy). It then re-reads a seeded random sample of image rows from their ``uri``,
checks the bytes still hash to the row id (a changed file is reported, not compared), runs
decode → preprocess → forward exactly as extraction does (video frames: decoded again
from the start of the file until the frame with the row's presentation time), and compares with the stored
vectors: ``cls`` by max absolute difference (``atol``) and cosine; patch tokens, stored as
float16, by cosine (``patch_cos``).

Re-extraction on the same platform with the same batch composition is bit-identical;
one image at a time (as here) may differ from a batched forward in the last float32 bits
(BLAS blocks sums by batch size), hence a tolerance rather than equality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurestore.errors import ConfigError, FeatureStoreError
from featurestore.paths import RootsArg, missing_message, parse_roots, reload_args, resolve_source, split_fragment
from featurestore.store import Store

DEFAULT_ATOL = 1e-4
DEFAULT_PATCH_COS = 0.999
_SCAN = 65_536  # row ids per streamed batch


@dataclass
class VerifyReport:
    """What ``featurestore verify`` found (``as_dict`` for JSON)."""

    table: str
    model_hash: str
    weights: str  # what was loaded
    weights_ok: bool
    checked: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    max_abs_cls: float | None = None  # None: no row was compared (a figure over nothing means nothing)
    min_cos_cls: float | None = None
    min_cos_patches: float | None = None
    atol: float = DEFAULT_ATOL
    patch_cos: float = DEFAULT_PATCH_COS
    worst: list[dict[str, Any]] = field(default_factory=list)  # the rows that differ most
    missing: list[str] = field(default_factory=list)  # stored uris (each once) of sampled rows whose source is not there
    ok: bool = False
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def _find_frame(uri: str, video_id: str, row_id: str) -> Any:
    """The decoded frame whose id (video hash + exact presentation time) is ``row_id``:
    frames are decoded in order from the start until it comes (the sampling spec of the
    run is not recorded, the frame's identity is)."""
    from featurestore.loader import frame_id
    from featurestore.video import SampleSpec, iter_frames

    try:
        for frame in iter_frames(uri, SampleSpec("every", 1), uri=uri):
            if frame_id(video_id, frame.pts, frame.time_base) == row_id:
                return frame.image
    except Exception:  # a stream that fails to decode now: the frame is not found again
        return None
    return None


def verify(
    store: Store | str,
    model: str,
    *,
    sample: int = 32,
    weights: str | None = None,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    patch_cos: float = DEFAULT_PATCH_COS,
    device: str = "cpu",
    roots: RootsArg = None,
) -> VerifyReport:
    """Re-extract ``sample`` stored image rows of ``model`` and compare (see the module doc).

    Sources and the recorded weights location are found through :mod:`featurestore.paths`:
    ``roots`` (``{old: new}`` or ``["OLD=NEW", …]``) re-roots a tree that moved; a source
    that is not there is counted and named in ``report.missing``.
    """
    from featurestore.api import create_backbone
    from featurestore.extract import resolve_device
    from featurestore.loader import _file_sha256
    from featurestore.search import encode_image, encode_pil, verify_image_backbone

    st = store if isinstance(store, Store) else Store(store)
    card = st.card(model)
    if card.adapter is not None:
        raise ConfigError(
            f"{card.table} holds adapted features; verify the model they come from (--model {card.adapter.base_table}): "
            "the adapter's tensors are checked against their digest whenever they are loaded."
        )
    if sample < 1:
        raise ConfigError(f"--sample {sample}: verify at least 1 row.")
    roots = parse_roots(roots)
    name, source = reload_args(card, weights, roots)
    shown = source or (name if card.backbone_resolved else card.weights_source)
    report = VerifyReport(card.table, card.model_hash, shown, False, atol=atol, patch_cos=patch_cos)
    backbone = create_backbone(name, source)
    try:
        verify_image_backbone(backbone, card)
    except FeatureStoreError as exc:
        report.message = f"the model loaded now is not the one that made {card.table}: {exc}"
        return report
    report.weights_ok = True
    dev = resolve_device(device)
    backbone.to(dev)
    table = st.open_table(card.table)
    table.checkout(table.version)  # the rows counted are the rows sampled
    rows = int(table.count_rows())
    skipped: dict[str, int] = {}
    diffs: list[dict[str, Any]] = []
    patch_cos_min: float | None = None
    for item in _sampled_rows(table, rows, sample, seed, card.dense):
        uri = item["uri"]
        path = split_fragment(resolve_source(uri, roots))[0]
        try:
            digest = _file_sha256(path)
        except OSError:
            skipped["source missing"] = skipped.get("source missing", 0) + 1
            if uri not in report.missing:  # frames of one video share their uri
                report.missing.append(uri)
            continue
        if digest != (item["video_id"] or item["id"]):
            skipped["source changed since extraction"] = skipped.get("source changed since extraction", 0) + 1
            continue
        if item["video_id"] is None:
            enc = encode_image(backbone, card, path, dev, dense=card.dense)
        else:
            frame = _find_frame(path, item["video_id"], item["id"])
            if frame is None:
                skipped["video frame not found again"] = skipped.get("video frame not found again", 0) + 1
                continue
            enc = encode_pil(backbone, card, frame, dev, dense=card.dense)
        stored = item["cls"]
        d = float(np.max(np.abs(enc["cls"] - stored)))
        c = float(_cos(enc["cls"], stored))
        row = {"id": item["id"], "uri": uri, "max_abs_cls": d, "cos_cls": c}
        if card.dense and enc["patches"] is not None:
            pc = float(np.min(_cos(enc["patches"].astype(np.float16).astype(np.float32), item["patches"])))
            row["min_cos_patches"] = pc
            patch_cos_min = pc if patch_cos_min is None else min(patch_cos_min, pc)
        diffs.append(row)
    report.checked = len(diffs)
    report.skipped = skipped
    if diffs:
        report.max_abs_cls = max(r["max_abs_cls"] for r in diffs)
        report.min_cos_cls = min(r["cos_cls"] for r in diffs)
        report.worst = sorted(diffs, key=lambda r: -r["max_abs_cls"])[:5]
    report.min_cos_patches = patch_cos_min
    if not diffs:
        report.message = _nothing_checked(card.table, rows, skipped)
        if report.missing:
            report.message += " " + missing_message(report.missing[0], resolve_source(report.missing[0], roots), bool(roots))
    elif report.max_abs_cls > atol or (patch_cos_min is not None and patch_cos_min < patch_cos):
        report.message = (
            f"features drifted: max |cls difference| {report.max_abs_cls:.3g} (tolerance {atol:g}), min cls cosine "
            f"{report.min_cos_cls:.6f}" + (f", min patch cosine {patch_cos_min:.6f} (tolerance {patch_cos:g})" if patch_cos_min is not None else "")
            + ". The weights match, so preprocessing or numerics changed: compare library_versions in the card with this "
            "environment."
        )
    else:
        report.ok = True
        report.message = f"{len(diffs)} rows re-extracted within tolerance (max |cls difference| {report.max_abs_cls:.3g})."
    return report


def _sample_rowids(table: Any, rows: int, sample: int, seed: int) -> np.ndarray:
    """Row ids of ``sample`` rows drawn (seeded) among the ``rows`` rows in row-id order.

    The positions drawn are those :class:`~featurestore.readers.FeatureDataset` would give
    (it orders rows by row id), so the sample is the one verify always took; but only the
    row-id column is streamed, and only the drawn ids are kept while the scan meets rows in
    row-id order (as appends leave them). A table whose scan order differs (fragments
    reordered by compaction) keeps its row ids, 8 bytes a row, to sort them.
    """
    if not rows:
        return np.empty(0, np.int64)
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(sample, rows), replace=False))

    def scan() -> Any:
        return table.search().select(["id"]).with_row_id(True).limit(None).to_batches(_SCAN)

    chosen: list[np.ndarray] = []
    seen, last = 0, -1
    for rb in scan():
        rid = rb.column("_rowid").to_numpy()
        if len(rid) and not (rid[0] > last and (rid[1:] > rid[:-1]).all()):
            break  # not in row-id order: positions cannot be told as the scan goes
        lo, hi = np.searchsorted(pick, [seen, seen + len(rid)])
        chosen.append(rid[pick[lo:hi] - seen])
        seen += len(rid)
        last = int(rid[-1]) if len(rid) else last
    else:
        return np.concatenate(chosen) if chosen else np.empty(0, np.int64)
    every = np.sort(np.concatenate([rb.column("_rowid").to_numpy() for rb in scan()]))
    return every[pick]


def _sampled_rows(table: Any, rows: int, sample: int, seed: int, dense: bool) -> list[dict[str, Any]]:
    """The sampled rows (``id``, ``uri``, ``video_id``, ``cls`` and maybe ``patches`` as
    float32 arrays), in row-id order: one take of the drawn rows."""
    rowids = _sample_rowids(table, rows, sample, seed)
    if not len(rowids):
        return []
    # a table made before video support has no video_id column until its next write
    cols = [c for c in ["id", "uri", "video_id", "cls"] + (["patches"] if dense else []) if c in table.schema.names]
    got = table.take_row_ids(rowids.tolist()).select(cols).with_row_id().to_arrow()
    got = got.take(np.argsort(got.column("_rowid").to_numpy()))
    cls = got.column("cls").combine_chunks()
    vids = got.column("video_id").to_pylist() if "video_id" in cols else [None] * got.num_rows
    items = [{"id": i, "uri": u, "video_id": v} for i, u, v in zip(got.column("id").to_pylist(), got.column("uri").to_pylist(), vids)]
    x = cls.values.to_numpy(zero_copy_only=False).reshape(len(cls), cls.type.list_size)  # (n, D)
    for item, row in zip(items, x):
        item["cls"] = row
    if dense:
        width = got.schema.field("patches").type.value_type.list_size
        for item, p in zip(items, got.column("patches").combine_chunks()):
            item["patches"] = p.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)  # (N, P)
    return items


def _nothing_checked(table: str, rows: int, skipped: dict[str, int]) -> str:
    """Why verify compared no row: the report fails rather than pass on nothing."""
    if not rows:
        return f"nothing checked: table {table} has no rows. Fix: extract into it first, or verify another model."
    why = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
    return (
        f"nothing checked: none of the {sum(skipped.values())} sampled rows of {table} could be re-read from its source "
        f"({why}). Fix: run verify where the extracted files are, at the same paths and unchanged."
    )


__all__ = ["VerifyReport", "verify"]
