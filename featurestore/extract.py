"""The extraction run: DataLoader workers → batched forward → grouped idempotent commits.

Memory stays flat in the size of the table: the workers ask the table (by index) which
ids of a chunk of files are stored, and only the new ones are decoded; no process holds
the set of every stored id. Rows go to a :class:`~featurestore.writer.TableWriter` that
commits them every ``commit_seconds`` (or ``commit_rows``) on a background thread while
the next batches are computed, so a killed run loses at most a few seconds of work.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from featurestore import __version__
from featurestore.backbone import Backbone
from featurestore.config import ErrorRecord, ExtractConfig, ExtractSummary, ModelCard
from featurestore.errors import ConfigError
from featurestore.hashing import model_hash, weights_sha256
from featurestore.clips import load_aggregators
from featurestore.layers import resolve_layers
from featurestore.loader import SourceDataset, make_loader, start_worker_server
from featurestore.media import DECODE_POLICY
from featurestore.commit import CommitResult, StoredIds
from featurestore.paths import local_locations, source_uri
from featurestore.statcache import StatCache, stat_rows
from featurestore.store import ERRORS_SCHEMA, ERRORS_TABLE, Store, error_rows, feature_batch, table_name_for
from featurestore.writer import TableWriter

MAX_ERROR_SAMPLES = 20


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available; a cuda device that is not there is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}. Fix: use cpu, cuda, cuda:N or auto.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device. Fix: --device cpu.")
    return dev


def build_card(
    backbone: Backbone,
    backbone_name: str,
    *,
    dense: bool,
    layers: tuple[int, ...] | None = None,
    weights_arg: str | None = None,
) -> ModelCard:
    """Hash the model and write down everything that determines its features.

    ``layers`` are absolute block indices (see :func:`featurestore.layers.resolve_layers`).
    """
    # only backbones that support layers are asked with the keyword (older plugins keep working)
    output = backbone.output_spec(dense, layers=layers) if layers is not None else backbone.output_spec(dense)
    spec = {
        "preprocessing": backbone.preprocess_spec(),
        "output": output,
        "decode": DECODE_POLICY,
    }
    wdigest = weights_sha256(backbone.named_tensors())
    mhash = model_hash(wdigest, spec)
    info = backbone.card_info()
    layout = backbone.token_layout(layers)
    # absolute, so later commands reload the model from any directory (never part of the hash)
    backbone_resolved, weights_resolved = local_locations(backbone_name, weights_arg, info.get("weights_source"))
    return ModelCard(
        model_hash=mhash,
        weights_sha256=wdigest,
        backbone=backbone_name,
        table=table_name_for(backbone_name, mhash),
        plugin=info["plugin"],
        plugin_version=info["plugin_version"],
        weights_source=info["weights_source"],
        weights_revision=info.get("weights_revision"),
        weights_arg=weights_arg,
        backbone_resolved=backbone_resolved,
        weights_resolved=weights_resolved,
        architecture=info["architecture"],
        dim=backbone.feature_dim(layers),
        patch_dim=_patch_dim(backbone, layers, dense),
        dense=dense,
        layers=list(layers) if layers is not None else None,
        layer_dims=[backbone.feature_dim((i,)) for i in layers] if layers is not None else None,
        text_dim=backbone.text_dim if layers is None else None,
        token_layout=layout,
        preprocessing=spec["preprocessing"],
        output_spec=spec["output"],
        decode_policy=DECODE_POLICY,
        patch_dtype="float16" if dense else None,
        library_versions={"featurestore": __version__, "torch": torch.__version__, **info.get("library_versions", {})},
        created_at=datetime.now(timezone.utc),
    )


def _patch_dim(backbone: Backbone, layers: tuple[int, ...] | None, dense: bool) -> int | None:
    if not dense:
        return None
    pdim = backbone.patch_dim(layers)
    return None if pdim == backbone.feature_dim(layers) else pdim


class _Progress:
    """A rich progress bar on stderr with images/s, or nothing."""

    def __init__(self, total: int, enabled: bool, label: str):
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
            )
            self._task = self._bar.add_task(label, total=total, rate=0.0)
            self._bar.start()
        self._t0 = time.perf_counter()
        self._done = 0

    def advance(self, n: int, computed: int) -> None:
        self._done += computed
        if self._bar is not None:
            rate = self._done / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, advance=n, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run_extraction(
    store: Store,
    backbone: Backbone,
    sources: list[str],
    config: ExtractConfig,
    *,
    progress: bool = False,
) -> ExtractSummary:
    """Extract features for ``sources`` into the table of ``backbone``'s model hash."""
    from featurestore.video import is_video_path, parse_sample

    device = resolve_device(config.device)
    sources = [source_uri(s) for s in sources]  # the uri stored: found again from any directory
    layers = resolve_layers(config.layers, backbone.num_layers, config.backbone)
    sample = parse_sample(config.sample)
    n_videos = sum(1 for s in sources if is_video_path(s))
    aggregators = load_aggregators(config.aggregate) if config.aggregate else []
    preprocessor = backbone.preprocessor()
    if config.workers:
        start_worker_server(preprocessor)  # its imports overlap hashing and opening the store
    card = build_card(backbone, config.backbone, dense=config.dense, layers=layers, weights_arg=config.weights)
    table = store.register_model(card)
    if table.name != card.table:  # the model, reached by another spelling of its path, already has a table
        card = next(c for c in store.cards() if c.model_hash == card.model_hash)
    adapted = [_OnTheFly(store, card, ref, config) for ref in config.adapters]  # checked before any image is read
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    tag = (config.tag or f"run-{run_id}") if config.tag_run else None
    if tag is not None and tag in table.tags.list():  # before any work: the name is taken
        raise ConfigError(f"table {card.table} already has a tag {tag!r}. Fix: --tag another name (or --no-tag).")
    backbone.to(device)

    stored = StoredIds(store.path, card.table)  # asked by the workers, a chunk of files at a time
    stat_cache = StatCache(store.path, enabled=not config.rehash)  # files read before are not read again
    dataset = SourceDataset(sources, preprocessor, stored, config.max_pixels, sample if n_videos else None, stat_cache)
    loader = make_loader(dataset, batch_size=config.batch_size, workers=config.workers, pin_memory=device.type == "cuda")
    schema = table.schema
    seen: set[str] = set()  # ids of this run (same bytes under two paths are computed once)
    handed = skipped_existing = skipped_dup = 0
    frames = {"written": 0}

    def count_frames(res: CommitResult) -> None:
        if res.rows is not None and "video_id" in res.rows.column_names:
            frames["written"] += res.rows.num_rows - res.rows.column("video_id").null_count

    writer = TableWriter(
        store.db.open_table(card.table),
        commit_rows=config.commit_rows,
        commit_seconds=config.commit_seconds,
        on_commit=count_frames,
        label=card.table,
    )
    error_writer: TableWriter | None = None
    stat_writer: TableWriter | None = None
    writers = [writer, *(ad.writer for ad in adapted)]
    run_videos: list[str] = []  # video ids with frames in this run (new or already stored), in order
    run_videos_seen: set[str] = set()
    errors: list[ErrorRecord] = []
    n_errors = 0
    error_budget = config.max_error_rate * len(sources)
    bar = _Progress(len(sources), progress, config.backbone)
    t0 = time.perf_counter()
    ok = False
    try:
        for batch in loader:
            batch_errors = list(batch.errors)
            if batch.stat_records:
                if stat_writer is None:  # the first run over a store creates the cache
                    stat_writer = _stat_writer(store, config)
                    writers.append(stat_writer)
                stat_writer.put(stat_rows(batch.stat_records))
            run_videos.extend(v for v in batch.video_ids if v not in run_videos_seen)
            run_videos_seen.update(batch.video_ids)
            skipped_existing += len(batch.skipped)
            n_new = 0
            for group in batch.groups:
                keep = []
                for i, meta in enumerate(group.metas):
                    if meta.id in seen:  # same bytes under another path, earlier in this run
                        skipped_dup += 1
                    else:
                        seen.add(meta.id)
                        keep.append(i)
                if not keep:
                    continue
                metas = [group.metas[i] for i in keep]
                px = group.pixel_values if len(keep) == len(group.metas) else group.pixel_values[keep]
                try:
                    rows = _forward_rows(backbone, px, metas, device, config.dense, layers, schema, run_id)
                except Exception as exc:  # e.g. out of memory: record, go on
                    batch_errors += [
                        ErrorRecord(id=m.id, uri=m.uri, stage="forward", error_type=type(exc).__name__, message=str(exc)[:2000])
                        for m in metas
                    ]
                    for m in metas:
                        seen.discard(m.id)
                    continue
                checked = [m.checked_version for m in metas]
                # the ids were absent at the oldest version the workers asked (None: not asked)
                writer.put(rows, absent_at=None if None in checked else min(checked))  # type: ignore[type-var]
                for ad in adapted:
                    ad.put(rows)
                n_new += rows.num_rows
            handed += n_new
            if batch_errors:
                if error_writer is None:  # created on the first error: a clean run makes no errors table
                    error_writer = TableWriter(
                        store._open_or_create(ERRORS_TABLE, ERRORS_SCHEMA),
                        key=None,
                        commit_rows=config.commit_rows,
                        commit_seconds=config.commit_seconds,
                        label=ERRORS_TABLE,
                    )
                    writers.append(error_writer)
                error_writer.put(error_rows(batch_errors, run_id=run_id, model_hash=card.model_hash, backbone=card.backbone))
                n_errors += len(batch_errors)
                errors += batch_errors[: max(0, MAX_ERROR_SAMPLES - len(errors))]
            bar.advance(batch.sources_done, n_new)
            if config.max_error_rate < 1.0 and n_errors > error_budget:
                break  # the limit is already exceeded: finishing cannot bring the rate back
        ok = True
    finally:
        bar.close()
        _close_writers(writers, ok)
    written = writer.inserted
    skipped_existing += handed - written  # stored by another run between the workers' check and our commit
    frames_written = frames["written"]
    clips_written, clip_tables = 0, []
    if aggregators:
        from featurestore.clips import aggregate_videos

        for agg in aggregators:
            res = aggregate_videos(store, card, agg, video_ids=run_videos, window=config.window, stride=config.stride, run_id=run_id)
            clips_written += res.written
            clip_tables.append(res.table)
    adapted_tables = {}
    for ad in adapted:
        ad.finish(store)  # rows stored before this run (skipped above) are adapted too
        adapted_tables[ad.card.table] = ad.written
    table.checkout_latest()  # every writer has flushed: the version holds this run's rows
    version = int(table.version)
    if tag is not None:
        table.tags.create(tag, version)  # a durable pin: cleanup never removes a tagged version
    seconds = time.perf_counter() - t0
    rate = n_errors / len(sources) if sources else 0.0
    succeeded = written + skipped_existing + skipped_dup
    return ExtractSummary(
        run_id=run_id,
        store=store.path,
        backbone=config.backbone,
        model_hash=card.model_hash,
        table=card.table,
        dense=config.dense,
        device=str(device),
        inputs=len(sources),
        written=written,
        skipped_existing=skipped_existing,
        skipped_duplicate=skipped_dup,
        errors=n_errors,
        videos=n_videos,
        frames_written=frames_written,
        clips_written=clips_written,
        clip_tables=clip_tables,
        adapted_tables=adapted_tables,
        version=version,
        tag=tag,
        error_rate=rate,
        seconds=seconds,
        images_per_second=written / seconds if seconds > 0 else 0.0,
        error_samples=errors[:MAX_ERROR_SAMPLES],
        ok=(succeeded > 0 or not sources) and rate <= config.max_error_rate,
    )


def _stat_writer(store: Store, config: ExtractConfig) -> TableWriter:
    """The writer of the store's stat cache (its old versions are pruned as it is compacted)."""
    from featurestore.commit import MaintainPolicy
    from featurestore.statcache import PRUNE_AFTER, STAT_TABLE, open_stat_table

    return TableWriter(
        open_stat_table(store.path),
        key="key",
        commit_rows=config.commit_rows,
        commit_seconds=config.commit_seconds,
        policy=MaintainPolicy(prune_older_than=PRUNE_AFTER),
        label=STAT_TABLE,
    )


def _close_writers(writers: list[TableWriter], ok: bool) -> None:
    """Flush every writer (also when the run stops on an error: rows computed are kept);
    the first failure is raised once all were tried."""
    first: BaseException | None = None
    for w in writers:
        try:
            w.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            w.abort()
            first = first or exc
    if first is not None and ok:
        raise first


class _OnTheFly:
    """A fitted adapter applied to each batch as it is written (``--adapter``)."""

    def __init__(self, store: Store, card: ModelCard, ref: str, config: ExtractConfig):
        from featurestore.adapters import adapter_card, check_base, load_fitted, open_adapted

        self.card = adapter_card(store, ref)
        check_base(self.card, card)
        self.adapter = load_fitted(store, self.card)
        _, self.table = open_adapted(store, self.card)
        self.writer = TableWriter(
            self.table,
            commit_rows=config.commit_rows,
            commit_seconds=config.commit_seconds,
            label=f"{self.card.table} (adapted; the raw rows are stored: finish with "
            f"featurestore adapt apply -s {store.path} --adapter {self.card.adapter_hash[:12]})",
        )
        self.written = 0

    def put(self, rows: Any) -> None:
        from featurestore.adapters import adapt_rows

        self.writer.put(adapt_rows(self.adapter, self.card, self.table.schema, rows))

    def finish(self, store: Store) -> None:
        from featurestore.adapters import apply_adapter

        self.written = self.writer.inserted + apply_adapter(store, self.card.adapter_hash).written


def _forward_rows(
    backbone: Backbone,
    pixel_values: torch.Tensor,
    metas: list,
    device: torch.device,
    dense: bool,
    layers: tuple[int, ...] | None,
    schema: Any,
    run_id: str,
) -> Any:
    with torch.inference_mode():
        px = pixel_values.to(device, non_blocking=True)
        out = backbone.forward(px, dense=dense, layers=layers) if layers is not None else backbone.forward(px, dense=dense)
        cls = out.cls.float().cpu().numpy()  # (B, D)
        width = schema.field("cls").type.list_size
        if cls.shape[1] != width:
            raise RuntimeError(
                f"backbone {backbone.name} returned cls of width {cls.shape[1]} but its model card says {width} "
                f"(a plugin bug: feature_dim() and forward() disagree)"
            )
        patches = None
        grids = None
        if dense:
            if out.patches is None:
                raise RuntimeError(f"backbone {backbone.name} returned no patch tokens although dense output was asked for")
            p = out.patches.to(torch.float16).cpu().numpy()  # (B, N, P)
            pwidth = schema.field("patches").type.value_type.list_size
            if p.shape[-1] != pwidth:
                raise RuntimeError(
                    f"backbone {backbone.name} returned patch tokens of width {p.shape[-1]} but its model card says "
                    f"{pwidth} (a plugin bug: patch_dim() and forward() disagree)"
                )
            patches = list(p)
            grids = [(out.layout.grid_h, out.layout.grid_w)] * len(metas)
    return feature_batch(
        schema,
        ids=[m.id for m in metas],
        uris=[m.uri for m in metas],
        sizes=[m.size for m in metas],
        crop_boxes=np.asarray([m.crop_box for m in metas], np.float32),
        cls=cls,
        patches=patches,
        grids=grids,
        run_id=run_id,
        video_ids=[m.video_id for m in metas],
        timestamps=[m.timestamp_s for m in metas],
        frame_indices=[m.frame_index for m in metas],
    )


__all__ = ["run_extraction", "build_card", "resolve_device"]
