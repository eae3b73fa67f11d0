"""The Python API: ``FeatureStore(path).extract(...)``. The CLI only wraps this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from featurestore.config import ExtractConfig, ExtractSummary, ModelCard
from featurestore.errors import ConfigError
from featurestore.layers import parse_layers
from featurestore.plugins import get_host, list_backbones  # noqa: F401  (public here too)
from featurestore.sources import expand_sources
from featurestore.store import Store

if TYPE_CHECKING:
    from featurestore.backbone import Backbone
    from featurestore.paths import RootsArg
    from featurestore.search import SearchResult

# torch comes in with featurestore.backbone / featurestore.extract: those are imported where a
# model runs, so the catalog commands (models, errors, clips …) never pay for it.


def create_backbone(name: str, weights: str | None = None) -> Backbone:
    """Build a registered backbone by name (``dinov2_vits14``, ``hf:<id or dir>`` …)."""
    entry = get_host().backbones.get(name)
    backbone = entry.factory(name, weights=weights)
    from featurestore.backbone import Backbone  # torch: loaded by the factory by now, unless it failed first

    if not isinstance(backbone, Backbone):
        raise ConfigError(
            f"plugin {entry.plugin!r} returned {type(backbone).__name__} for backbone {name!r}, "
            "not a featurestore.backbone.Backbone. Fix: report this to the plugin's authors."
        )
    return backbone


def resolve_device(device: str) -> Any:
    """The torch device for ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (imports torch when called)."""
    from featurestore.extract import resolve_device as resolve

    return resolve(device)


class FeatureStore:
    """A feature store in a LanceDB directory.

    Examples:
        >>> fs = FeatureStore("features.lance")
        >>> summary = fs.extract(["images/"], backbone="dinov2_vits14", dense=True)
        >>> fs.models()[0]["rows"]
    """

    def __init__(self, path: str | Path):
        self.store = Store(path)
        self._backbones: dict[tuple[str, str | None], Backbone] = {}
        self._adapters: dict[str, Any] = {}

    @property
    def path(self) -> str:
        return self.store.path

    def backbone(self, name: str, weights: str | None = None) -> Backbone:
        """Load (once per FeatureStore) the backbone ``name``."""
        key = (name, weights)
        if key not in self._backbones:
            self._backbones[key] = create_backbone(name, weights)
        return self._backbones[key]

    def extract(
        self,
        paths: Iterable[str | Path],
        backbone: str,
        *,
        weights: str | None = None,
        dense: bool = False,
        layers: str | Sequence[int] | None = None,
        batch_size: int = 32,
        workers: int = 2,
        device: str = "auto",
        max_error_rate: float = 1.0,
        max_pixels: int | None = None,
        sample: str = "uniform:8",
        aggregate: Sequence[str] | None = None,
        window: float | None = None,
        stride: float | None = None,
        adapters: Sequence[str] | None = None,
        tag: str | None = None,
        tag_run: bool = True,
        commit_rows: int = 50_000,
        commit_seconds: float = 2.0,
        rehash: bool = False,
        progress: bool = False,
    ) -> ExtractSummary:
        """Extract CLS (and with ``dense`` patch) features of images into this store.

        Args:
            paths: image files, directories (recursive), globs or ``@list.txt`` files.
            backbone: registered backbone name.
            weights: where weights come from instead of the backbone's default.
            dense: also store patch tokens (float16).
            layers: blocks whose outputs to store, concatenated: ``"-4,-3,-2,-1"``, ``"last4"``
                or ``[8, 9, 10, 11]``; None stores the backbone's default output.
            batch_size: images per forward pass.
            workers: DataLoader worker processes for decode + preprocess.
            device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
            max_error_rate: ``ok`` is False when errors / inputs exceeds this.
            max_pixels: decompression-bomb limit (None: Pillow's).
            sample: video frame sampling: ``uniform:N``, ``fps:R``, ``keyframes`` or ``every:K``.
            aggregate: temporal aggregators (``mean``, ``trimmed-mean:proportion=0.2`` …) run on
                the frames of every video of this run; clip rows go to one table per aggregator.
            window: aggregate per window of this many seconds instead of per video.
            stride: seconds between window starts (default: ``window``).
            adapters: fitted adapters (hash, prefix or name) of this model, applied to each
                batch as it is written; their tables end up covering every stored row.
            tag: name for the table version the run ends at (default ``run-<run id>``).
            tag_run: False leaves the version untagged.
            commit_rows: commit once this many new rows are waiting.
            commit_seconds: commit once the oldest waiting row has waited this long; rows
                are committed on a background thread while the next batches are computed,
                so a killed run loses at most about this many seconds of work.
            rehash: read and hash every file. By default a file whose path, size, mtime and
                inode the store's stat cache knows is not read again when its content is
                stored (see :mod:`featurestore.statcache`).
            progress: show a progress bar on stderr.

        Returns:
            The run's :class:`ExtractSummary`; failed inputs are rows in ``errors``.
        """
        config = ExtractConfig(
            backbone=backbone,
            weights=weights,
            dense=dense,
            layers=parse_layers(layers),
            batch_size=batch_size,
            workers=workers,
            device=device,
            max_error_rate=max_error_rate,
            max_pixels=max_pixels,
            sample=sample,
            aggregate=list(aggregate or []),
            window=window,
            stride=stride,
            adapters=list(adapters or []),
            tag=tag,
            tag_run=tag_run,
            commit_rows=commit_rows,
            commit_seconds=commit_seconds,
            rehash=rehash,
        )
        sources = expand_sources(str(p) for p in paths)
        started = False
        if workers and (backbone, weights) not in self._backbones:
            # the workers' forkserver imports torch and the plugin's image processing while this
            # process loads the model (seconds each): side by side instead of one after the other
            from featurestore.workers import start_worker_server

            started = start_worker_server(preload=get_host().backbones.get(backbone).metadata.get("worker_preload", ()))
        try:
            model = self.backbone(backbone, weights)  # a hub that cannot be reached fails here, before torch is imported
        except BaseException:
            if started:  # no worker will run: stop its server now rather than after its imports
                from featurestore.workers import stop_worker_server

                stop_worker_server()
            raise
        from featurestore.extract import run_extraction

        return run_extraction(self.store, model, sources, config, progress=progress)

    def models(self) -> list[dict[str, Any]]:
        """One dict per model: ``model_hash``, ``backbone``, ``table``, ``rows``, ``dim`` …"""
        return self.store.models()

    def card(self, ref: str) -> ModelCard:
        """The model card for a hash, hash prefix, table name or backbone name."""
        return self.store.card(ref)

    def table(self, ref: str) -> Any:
        """The LanceDB table of a model (see :meth:`card` for ``ref``), or any table by its exact name
        (e.g. a clip table from :meth:`clips`)."""
        if ref in self.store.table_names():
            return self.store.open_table(ref)
        return self.store.open_table(self.card(ref).table)

    def aggregate(self, ref: str, aggregator: str, *, window: float | None = None, stride: float | None = None) -> Any:
        """Aggregate the stored frames of every video of model ``ref``; nothing is re-extracted.

        Args:
            ref: the model (table name, hash prefix or backbone name).
            aggregator: ``NAME`` or ``NAME:key=value,…`` (see ``featurestore aggregators``).
            window: seconds per clip (None: one clip per video).
            stride: seconds between window starts (default ``window``).

        Returns:
            :class:`featurestore.clips.AggregateResult` (clip table, rows written …).
        """
        from featurestore.clips import aggregate_videos, load_aggregators

        (agg,) = load_aggregators([aggregator])
        return aggregate_videos(self.store, self.card(ref), agg, window=window, stride=stride, run_id="aggregate")

    def clips(self) -> list[dict[str, Any]]:
        """The clip tables of this store: aggregator, spec, model, rows."""
        from featurestore.clips import clip_tables

        return clip_tables(self.store)

    def errors(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Rows of the errors table, optionally of one run, oldest first (a list: see
        :meth:`iter_errors` for a table too large to hold)."""
        return self.store.errors(run_id)

    def iter_errors(self, run_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The rows :meth:`errors` returns, streamed with memory that does not grow with the table."""
        return self.store.iter_errors(run_id)

    def count_errors(self, run_id: str | None = None) -> int:
        """How many error rows there are (of run ``run_id``), without reading them."""
        return self.store.count_errors(run_id)

    # -- language-aligned models: text search and zero-shot classification -------
    def reload_backbone(self, card: ModelCard, *, weights: str | None = None, roots: RootsArg = None) -> Backbone:
        """Load ``card``'s model again, from the weights location its card records (absolute,
        so from any directory; ``roots`` re-root it, ``weights`` overrides it). Not yet checked
        against the card: :meth:`text_backbone` and :meth:`image_backbone` do that."""
        from featurestore.paths import reload_args

        return self.backbone(*reload_args(card, weights, roots))

    def text_backbone(
        self, ref: str, *, weights: str | None = None, device: str = "cpu", roots: RootsArg = None
    ) -> tuple[ModelCard, Backbone]:
        """The model card of ``ref`` and its backbone loaded again for text, checked to be the same model
        (loaded as :meth:`reload_backbone`; every text and image query method takes ``roots`` too)."""
        from featurestore.zeroshot import check_text_card, verify_backbone

        card = self.card(ref)
        check_text_card(card)
        backbone = self.reload_backbone(card, weights=weights, roots=roots)
        verify_backbone(backbone, card)
        backbone.to(resolve_device(device))
        return card, backbone

    def search(
        self,
        ref: str,
        text: str,
        *,
        k: int = 10,
        weights: str | None = None,
        device: str = "cpu",
        version: int | str | None = None,
        roots: RootsArg = None,
    ) -> list[dict[str, Any]]:
        """Stored images of model ``ref`` nearest to ``text`` (cosine of ``cls`` and the text embedding).

        Returns:
            ``k`` dicts ``{rank, id, uri, score}``, best first; ``score`` is the cosine similarity.
        """
        from featurestore.zeroshot import search, text_embeddings

        if not text.strip():
            raise ConfigError("--text is empty. Fix: describe what to find, e.g. --text 'a photo of a dog'.")
        card, backbone = self.text_backbone(ref, weights=weights, device=device, roots=roots)
        query = text_embeddings(backbone, [text])[0]
        return search(self._open(card, version), query, k)

    def classify(
        self,
        ref: str,
        labels: str | Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        weights: str | None = None,
        device: str = "cpu",
        version: int | str | None = None,
        roots: RootsArg = None,
    ) -> Iterator[dict[str, Any]]:
        """Zero-shot labels for every stored image of model ``ref``; nothing is re-extracted.

        Args:
            labels: ``"cat,dog,car"``, ``"@labels.txt"`` (one per line) or a list.
            templates: prompt templates with ``{}`` for the label; their embeddings are averaged
                per label. Default ``["a photo of a {}."]``.

        Yields:
            ``{id, uri, label, score, scores}`` per stored image (softmax over labels for CLIP,
            independent sigmoids for SigLIP).
        """
        from featurestore.zeroshot import DEFAULT_TEMPLATES, check_templates, classify, label_embeddings, parse_list

        names = parse_list(labels, "labels")
        temps = check_templates(templates if templates else DEFAULT_TEMPLATES)
        card, backbone = self.text_backbone(ref, weights=weights, device=device, roots=roots)
        emb = label_embeddings(backbone, names, temps)
        return classify(self._open(card, version), emb, names, backbone.zero_shot_head())

    # -- nearest neighbours: by image, id or vector; patch-level MaxSim; ANN index ---------
    def search_vector(
        self,
        ref: str,
        vector: Any,
        *,
        k: int = 10,
        exact: bool = False,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        ef: int | None = None,
        query: dict[str, Any] | None = None,
        version: int | str | None = None,
    ) -> "SearchResult":
        """Stored rows of model ``ref`` nearest to ``vector`` (D,) by cosine similarity of ``cls``.

        Args:
            ref: the model (table name, hash prefix or backbone name).
            vector: query of the table's width ``card.dim``.
            k: how many hits.
            exact: compare every row even when the table has an ANN index.
            nprobes: IVF partitions searched (index only; default 20).
            refine_factor: re-rank ``k * refine_factor`` index candidates with the stored vectors
                (index only; default per index kind, see :data:`featurestore.search.DEFAULT_REFINE`).
            ef: HNSW candidate list size (HNSW kinds only; LanceDB's default 1.5 k).
            query: what the query was, echoed in the result.
            version: search this table version (number or tag) instead of the latest.

        Returns:
            :class:`featurestore.search.SearchResult`: ``hits`` ``{rank, score, uri, id}`` best
            first (``score`` is the cosine similarity), ``method`` ``"ann"`` or ``"exact"``.
        """
        from featurestore.search import as_query_vector, knn, knn_decoded

        card = self.card(ref)
        q = as_query_vector(vector, card.dim, "the query vector")
        table = self._open(card, version)
        info = query if query is not None else {"kind": "vector"}
        if "cls" not in table.schema.names and card.adapter is not None:  # integer codes: decode and compare
            from featurestore.readers import FeatureDataset

            ds = FeatureDataset(self.store.path, card.table, columns=["cls"], version=version)
            return knn_decoded(ds, q, k, query_info=info)
        return knn(table, q, k, query_info=info, exact=exact, nprobes=nprobes, refine_factor=refine_factor, ef=ef)

    def _open(self, card: ModelCard, version: int | str | None) -> Any:
        """``card``'s table, checked out at ``version`` (a number or tag; None: the latest)."""
        from featurestore.readers import resolve_version

        table = self.store.open_table(card.table)
        if version is not None:
            v, _ = resolve_version(table, version)
            table.checkout(v)
        return table

    # -- domain adapters ---------------------------------------------------------------
    def fit_adapter(
        self, ref: str, adapter: str, *, where: str | None = None, labels: str | Path | None = None, max_rows: int | None = None
    ) -> Any:
        """Fit ``adapter`` (``NAME`` or ``NAME:key=value,…``) on the stored ``cls`` of model ``ref``.

        Returns the :class:`featurestore.config.AdapterCard`; its tensors are saved in the store.
        """
        from featurestore.adapters import fit_adapter

        return fit_adapter(self.store, ref, adapter, where=where, labels=labels, max_rows=max_rows)

    def apply_adapter(self, adapter: str, *, model: str | None = None) -> Any:
        """Write a fitted adapter's output for every stored row of its base model to its table
        (rows already there are skipped). ``model``: the model you expect it to apply to."""
        from featurestore.adapters import apply_adapter

        return apply_adapter(self.store, adapter, model=model)

    def adapters(self) -> list[dict[str, Any]]:
        """The fitted adapters of this store: hash, name, params, base table, rows applied …"""
        from featurestore.adapters import adapters_summary

        return adapters_summary(self.store)

    def adapter(self, ref: str) -> Any:
        """The fitted adapter of an adapted table (``ref`` as :meth:`card`), or None for a model's own table."""
        card = self.card(ref)
        if card.adapter is None:
            return None
        from featurestore.adapters import load_fitted

        key = card.adapter.adapter_hash
        if key not in self._adapters:
            self._adapters[key] = load_fitted(self.store, card.adapter)
        return self._adapters[key]

    def _to_table_space(self, ref: str, x: np.ndarray) -> np.ndarray:
        """Query features from the base model → the space the table of ``ref`` stores
        (float adapters transform; integer-coded tables are compared decoded, in the base space)."""
        adapter = self.adapter(ref)
        if adapter is None or adapter.out_dtype() != "float32":
            return x
        return np.asarray(adapter.transform(np.asarray(x, np.float32).reshape(-1, adapter.in_dim())), np.float32).reshape(*x.shape[:-1], -1)

    def search_id(self, ref: str, row_id: str, **kw: Any) -> "SearchResult":
        """Rows nearest to the stored ``cls`` of row ``row_id`` (a full id or a unique prefix of >= 6 hex).

        The row itself is among the hits (score 1). Keywords as :meth:`search_vector`.
        """
        from featurestore.search import stored_row

        card = self.card(ref)
        table = self._open(card, kw.get("version"))
        if "cls" in table.schema.names:
            row = stored_row(table, row_id, ["cls"])
            vec = np.asarray(row["cls"], np.float32)
        else:  # an integer-coded adapter's table: the row's codes, decoded
            row = stored_row(table, row_id, ["codes"])
            vec = self.adapter(ref).decode(np.asarray([row["codes"]]))[0].astype(np.float32)
        return self.search_vector(ref, vec, query={"kind": "id", "id": row["id"], "uri": row["uri"]}, **kw)

    def image_backbone(
        self, ref: str, *, weights: str | None = None, device: str = "cpu", roots: RootsArg = None
    ) -> tuple[ModelCard, Backbone]:
        """The card of ``ref`` and its backbone loaded again, checked to reproduce the stored features.

        For an adapted table, the card and backbone of its base model (queries are encoded
        there, then adapted)."""
        from featurestore.search import verify_image_backbone

        card = self.card(ref)
        if card.adapter is not None:
            card = self.card(card.adapter.base_model_hash)
        backbone = self.reload_backbone(card, weights=weights, roots=roots)
        verify_image_backbone(backbone, card)
        backbone.to(resolve_device(device))
        return card, backbone

    def search_image(
        self, ref: str, path: str | Path, *, weights: str | None = None, device: str = "cpu", roots: RootsArg = None, **kw: Any
    ) -> "SearchResult":
        """Rows nearest to the image at ``path``, encoded by the model of ``ref`` loaded again.

        The model's weight digest, preprocessing and output spec must match the card. If the
        image is stored, its own row is among the hits (score ~1). Keywords as :meth:`search_vector`.
        """
        from featurestore.search import encode_image

        card, backbone = self.image_backbone(ref, weights=weights, device=device, roots=roots)
        enc = encode_image(backbone, card, str(path), resolve_device(device), dense=False)
        return self.search_vector(ref, self._to_table_space(ref, enc["cls"]), query={"kind": "image", "path": str(path)}, **kw)

    def search_patches(
        self,
        ref: str,
        *,
        image: str | Path | None = None,
        row_id: str | None = None,
        region: str | Sequence[float] | None = None,
        k: int = 10,
        exact: bool = False,
        weights: str | None = None,
        device: str = "cpu",
        version: int | str | None = None,
        roots: RootsArg = None,
    ) -> "SearchResult":
        """Rows whose patch tokens best match the query's (MaxSim), for a dense table.

        Args:
            image: query image (encoded by the model loaded again), or
            row_id: a stored row whose patch tokens are the query.
            region: ``"x0,y0,x1,y1"`` in the query image's original pixels: only the tokens
                whose cells' centres lie inside are used.
            exact: bypass a vector index on ``patches`` if one exists.

        Returns:
            :class:`featurestore.search.SearchResult`; ``score`` is the mean over query tokens
            of the best cosine among a stored image's tokens.
        """
        from featurestore.search import encode_image, maxsim, parse_region, region_tokens, stored_row

        if (image is None) == (row_id is None):
            raise ConfigError("patch search needs exactly one query: an image or a stored row id.")
        card = self.card(ref)
        table = self._open(card, version)
        if not card.dense or "patches" not in table.schema.names:
            raise ConfigError(
                f"table {card.table} holds no patch tokens (extracted without --dense). Fix: extract again "
                f"with --dense, or search by cls without --patches."
            )
        if image is not None:
            card, backbone = self.image_backbone(ref, weights=weights, device=device, roots=roots)
            enc = encode_image(backbone, card, str(image), resolve_device(device), dense=True)
            tokens, grid, crop, query = enc["patches"], enc["grid"], enc["crop_box"], {"kind": "image", "path": str(image)}
            tokens = self._to_table_space(ref, np.asarray(tokens, np.float32))
        else:
            row = stored_row(table, row_id, ["patches", "grid_h", "grid_w", "crop_box"])
            tokens = np.asarray(row["patches"], np.float32)  # (N, P)
            grid, crop, query = (row["grid_h"], row["grid_w"]), row["crop_box"], {"kind": "id", "id": row["id"], "uri": row["uri"]}
        query["grid"] = list(grid)
        if region is not None:
            box = parse_region(region)
            sel = region_tokens(box, crop, grid, card.token_layout)
            tokens = tokens[sel]
            query.update(region=list(box), token_indices=sel.tolist())
        query["tokens"] = int(tokens.shape[0])
        return maxsim(table, tokens, k, query_info=query, exact=exact)

    def index(self, ref: str, *, kind: str = "ivf_sq", partitions: int | None = None, sub_vectors: int | None = None) -> dict[str, Any]:
        """Build (or replace) the cosine ANN index on ``cls`` of model ``ref``; later searches use it.

        Args:
            kind: ``ivf_sq`` (default), ``ivf_pq``, ``ivf_flat``, ``ivf_rq``, ``ivf_hnsw_sq``, ``ivf_hnsw_pq``.
            partitions: IVF partitions (default sqrt(rows); HNSW kinds one per ~1M rows);
                at least 256 rows per partition are needed to train.
            sub_vectors: PQ sub-vectors, must divide the width (default D/8).

        Returns:
            name, kind, partitions, sub_vectors, rows, seconds …
        """
        from featurestore.search import build_index

        card = self.card(ref)
        table = self.store.open_table(card.table)
        if "cls" not in table.schema.names:
            raise ConfigError(
                f"table {card.table} holds integer codes of adapter {card.adapter.name if card.adapter else '?'}, not float "
                "vectors: LanceDB cannot index them. Search decodes them and compares exactly; for an ANN index, "
                "index the base model's table (LanceDB's ivf_pq/ivf_sq compress it themselves)."
            )
        return build_index(table, card.dim, kind=kind, partitions=partitions, sub_vectors=sub_vectors)

    def drop_index(self, ref: str) -> dict[str, Any] | None:
        """Drop the ANN index on ``cls`` of model ``ref`` (searches become exact); None if there was none."""
        from featurestore.search import drop_index

        return drop_index(self.store.open_table(self.card(ref).table))

    def index_info(self, ref: str) -> dict[str, Any] | None:
        """The ANN index on ``cls`` of model ``ref``: name, kind, distance type, indexed / unindexed rows."""
        from featurestore.search import index_info

        return index_info(self.store.open_table(self.card(ref).table))
