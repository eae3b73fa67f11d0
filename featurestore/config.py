"""Pydantic models for what featurestore writes down: model cards, run configs, summaries.

Their JSON Schemas live in ``schemas/`` (``python -m featurestore.schemas`` rewrites
them; a test fails when they drift).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TokenLayout(_Model):
    """Where the stored patch tokens come from in the backbone's token sequence."""

    grid_h: int = Field(description="rows of patch tokens")
    grid_w: int = Field(description="columns of patch tokens; patches are stored row-major, N = grid_h * grid_w")
    patch_size: int = Field(description="input pixels per patch side (or the feature-map stride for CNNs)")
    num_prefix_tokens: int = Field(description="tokens before the first patch token, all dropped from `patches`")
    num_register_tokens: int = Field(0, description="register tokens among the prefix: neither CLS nor patches")
    cls_source: str = Field(description="what the stored `cls` vector is, e.g. 'last_hidden_state[:, 0]'")
    input_h: int = Field(description="height in pixels of the preprocessed model input")
    input_w: int = Field(description="width in pixels of the preprocessed model input")


class AdapterCard(_Model):
    """A fitted domain adapter: what it was fitted on, with what, and where its tensors are.
    One row of `adapters`; copied into the model card of the table it writes."""

    adapter_hash: str = Field(description="SHA-256 of base model hash + adapter spec + fitted tensors; keys the adapted table")
    name: str = Field(description="registered adapter name, e.g. 'pca-whiten'")
    params: dict[str, Any] = Field(description="parameters with defaults filled in (hashed)")
    version: int = Field(description="the adapter's arithmetic version (hashed)")
    plugin: str = Field(description="distribution that provided the adapter")
    plugin_version: str = Field(description="its version")
    base_model_hash: str = Field(description="model whose features it was fitted on and applies to")
    base_table: str = Field(description="that model's feature table")
    base_backbone: str = Field(description="that model's backbone name")
    fit_rows: int = Field(description="rows the adapter was fitted on")
    fit_version: int = Field(description="version of the base table the fit rows were read from")
    fit_where: str | None = Field(None, description="SQL filter that chose the fit rows (None: all rows)")
    labels_file: str | None = Field(None, description="label file used to fit (adapters that need labels)")
    classes: list[str] | None = Field(None, description="class names of the output, in order (class-logit outputs)")
    in_dim: int = Field(description="width of the vectors it takes")
    out_dim: int = Field(description="width of its output (codes per vector for integer outputs)")
    out_dtype: str = Field(description="float32, or int8/uint8 codes that decode to in_dim floats")
    invertible: bool = Field(description="whether outputs decode back to approximate base features")
    patches: bool = Field(description="whether patch tokens are adapted too (dense base, same width, float output)")
    artifact: str = Field(description="safetensors file of the fitted tensors, relative to the store")
    state_sha256: str = Field(description="SHA-256 of the fitted tensors (name, dtype, shape, bytes)")
    metrics: dict[str, Any] = Field(description="what the fit reported (explained variance, reconstruction error, accuracy …)")
    table: str = Field(description="table the adapted features are written to")
    created_at: datetime = Field(description="when it was fitted (UTC)")


class ModelCard(_Model):
    """Everything needed to know which model produced a feature table. One row of `models`."""

    model_hash: str = Field(description="SHA-256 of weights + preprocessing + output spec; keys the table")
    weights_sha256: str = Field(description="SHA-256 of the weight tensors alone (name, dtype, shape, bytes)")
    backbone: str = Field(description="backbone name as asked for, e.g. 'dinov2_vits14' or 'hf:/models/vit'")
    table: str = Field(description="LanceDB table holding this model's features")
    plugin: str = Field(description="distribution that provided the backbone")
    plugin_version: str = Field(description="its version")
    weights_source: str = Field(description="hub id, directory or file the weights were loaded from")
    weights_revision: str | None = Field(None, description="hub commit of the weights, when known")
    weights_arg: str | None = Field(None, description="the --weights value given at extraction (None: the backbone's default)")
    backbone_resolved: str | None = Field(
        None, description="the backbone name with its local path made absolute, e.g. 'hf:/data/models/vit'; reloads use it"
    )
    weights_resolved: str | None = Field(
        None, description="absolute path of --weights when it named a local file or directory; reloads use it"
    )
    architecture: str = Field(description="model class, e.g. 'Dinov2Model'")
    dim: int = Field(description="width D of `cls` (and of each patch token unless `patch_dim` says otherwise)")
    patch_dim: int | None = Field(
        None, description="width of each patch token when it differs from `dim` (e.g. a CNN whose pre-logits add a layer)"
    )
    layers: list[int] | None = Field(
        None, description="blocks whose outputs are stored, concatenated in this order (None: the default output)"
    )
    layer_dims: list[int] | None = Field(None, description="width of each chosen block's slice of `cls` / patches")
    text_dim: int | None = Field(None, description="width of the model's text embeddings (None: no text tower)")
    dense: bool = Field(description="whether rows hold patch tokens")
    token_layout: TokenLayout | None = Field(None, description="patch token layout (for the fixed input size)")
    preprocessing: dict[str, Any] = Field(description="canonical preprocessing spec (hashed)")
    output_spec: dict[str, Any] = Field(description="canonical output spec: layer, tokens, dtypes (hashed)")
    decode_policy: dict[str, Any] = Field(description="how image files become RGB pixels (hashed)")
    cls_dtype: str = Field("float32", description="storage dtype of `cls`")
    patch_dtype: str | None = Field(None, description="storage dtype of `patches`, when dense")
    compute_dtype: str = Field("float32", description="dtype of the forward pass")
    library_versions: dict[str, str] = Field(description="versions of the libraries that computed the features")
    created_at: datetime = Field(description="when this card was first written (UTC)")
    adapter: AdapterCard | None = Field(
        None, description="for a table of adapted features: the adapter (its base model is `adapter.base_model_hash`)"
    )


class ExtractConfig(_Model):
    """Options of one extraction run (``featurestore extract``)."""

    backbone: str = Field(description="registered backbone name, or a family name like 'hf:<id or dir>'")
    weights: str | None = Field(None, description="override where weights come from (hub id, directory or file)")
    dense: bool = Field(False, description="also store the patch tokens (float16)")
    layers: list[int] | None = Field(
        None, description="block indices whose outputs to store, concatenated (negative: from the last); None: default output"
    )
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    workers: int = Field(2, ge=0, description="DataLoader worker processes for decode + preprocess (0: in-process)")
    device: str = Field("auto", description="'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)")
    max_error_rate: float = Field(1.0, ge=0.0, le=1.0, description="fail the run when errors / inputs exceeds this")
    max_pixels: int | None = Field(None, ge=1, description="decompression-bomb limit; None: Pillow's own limit")
    sample: str = Field("uniform:8", description="video frame sampling: uniform:N, fps:R, keyframes or every:K")
    aggregate: list[str] = Field(default_factory=list, description="temporal aggregators run on each video's frames after extraction")
    window: float | None = Field(None, gt=0, description="aggregate per window of this many seconds (None: one clip per video)")
    stride: float | None = Field(None, gt=0, description="seconds between window starts (default: the window)")
    adapters: list[str] = Field(default_factory=list, description="fitted adapters (hash or name) applied to each batch as it is written")
    tag: str | None = Field(None, description="tag the table's version at the end of the run with this name (default run-<run id>)")
    tag_run: bool = Field(True, description="tag the version at the end of the run at all (False: --no-tag)")
    commit_rows: int = Field(50_000, ge=1, description="commit once this many new rows are waiting")
    commit_seconds: float = Field(
        2.0, ge=0.0, description="commit once the oldest waiting row has waited this long (a kill loses at most about this much work)"
    )
    rehash: bool = Field(
        False, description="read and hash every file, ignoring the store's stat cache (which skips stored files unread)"
    )


class ErrorRecord(_Model):
    """One input that could not be turned into features. One row of `errors`."""

    id: str | None = Field(None, description="content hash, when the bytes could be read")
    uri: str = Field(description="path of the input")
    stage: Literal["read", "decode", "preprocess", "forward", "write"] = Field(description="where it failed")
    error_type: str = Field(description="error class name, e.g. 'TruncatedImageError'")
    message: str = Field(description="what went wrong and how to fix it")
    timestamp_s: float | None = Field(None, description="for videos: where decoding failed (earlier frames were kept)")


class ExtractSummary(_Model):
    """What one extraction run did (``featurestore extract --json`` prints this)."""

    run_id: str
    store: str
    backbone: str
    model_hash: str
    table: str
    dense: bool
    device: str
    inputs: int = Field(description="input files after expanding directories, globs and @lists")
    written: int = Field(description="new rows committed by this run")
    skipped_existing: int = Field(description="inputs whose content was already in the table (not recomputed)")
    skipped_duplicate: int = Field(description="inputs whose content appeared earlier in this run under another path")
    errors: int = Field(description="inputs that failed; each is a row in the `errors` table")
    videos: int = Field(0, description="inputs that are video files")
    frames_written: int = Field(0, description="of `written`, rows that are video frames")
    clips_written: int = Field(0, description="clip rows written by --aggregate")
    clip_tables: list[str] = Field(default_factory=list, description="clip tables written by --aggregate")
    adapted_tables: dict[str, int] = Field(default_factory=dict, description="rows written to each adapted table by --adapter")
    version: int | None = Field(None, description="the feature table's version when the run ended")
    tag: str | None = Field(None, description="the tag given to that version (None: --no-tag)")
    error_rate: float
    seconds: float
    images_per_second: float = Field(description="written rows per second of wall time")
    error_samples: list[ErrorRecord] = Field(default_factory=list, description="the first errors, for the summary")
    ok: bool = Field(description="false when nothing succeeded or max_error_rate was exceeded")


class ManifestTable(_Model):
    """One table of a store, as the manifest describes it."""

    kind: str = Field(description="features, adapted, clips, centroids, catalog or other")
    model_hash: str | None = Field(None, description="the model (or adapter) hash keying the table, for features/adapted/clips")
    backbone: str | None = Field(None, description="backbone name, for features/adapted")
    rows: int = Field(description="rows at the current version")
    version: int = Field(description="current table version")
    tags: dict[str, int] = Field(description="tag name -> version")
    content_digest: str = Field(
        description="SHA-256 over the rows' values in id order, without run_id/created_at: stable across compaction and reruns"
    )
    columns: list[str] = Field(description="column names")
    card: dict[str, Any] | None = Field(None, description="the model card, for features/adapted")


class Manifest(_Model):
    """A store described for sharing and for DVC metrics (``featurestore manifest``)."""

    format: str = Field(description="'featurestore-manifest/1'")
    featurestore_version: str
    store: str = Field(description="the store directory as given")
    rows: int = Field(description="feature rows over all features/adapted tables")
    tables: dict[str, ManifestTable] = Field(description="by table name")


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "model_card": ModelCard,
    "extract_config": ExtractConfig,
    "extract_summary": ExtractSummary,
    "error_record": ErrorRecord,
    "token_layout": TokenLayout,
    "adapter_card": AdapterCard,
    "manifest": Manifest,
}
