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
    from featurestore.readers import FeatureDataset
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
    columns = ["cls", "uri", "video_id"] + (["patches"] if card.dense else [])
    ds = FeatureDataset(st.path, card.table, columns=columns)
    skipped: dict[str, int] = {}
    pick = np.sort(np.random.default_rng(seed).choice(len(ds), min(sample, len(ds)), replace=False)) if len(ds) else []
    diffs: list[dict[str, Any]] = []
    patch_cos_min: float | None = None
    for item in ds.__getitems__(list(pick)) if len(pick) else []:
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
        stored = item["cls"].numpy()
        d = float(np.max(np.abs(enc["cls"] - stored)))
        c = float(_cos(enc["cls"], stored))
        row = {"id": item["id"], "uri": uri, "max_abs_cls": d, "cos_cls": c}
        if card.dense and enc["patches"] is not None:
            pc = float(np.min(_cos(enc["patches"].astype(np.float16).astype(np.float32), item["patches"].numpy())))
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
        report.message = _nothing_checked(card.table, len(ds), skipped)
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
