"""Linear and k-NN probes over stored features: how well do they separate labelled classes?

``probe(store, model, labels)`` joins a label file (``id`` or ``uri`` + ``label``) to a
model's feature table and runs stratified k-fold cross-validation of two classifiers:

* **linear**: multinomial logistic regression with an L2 penalty, fitted full-batch with
  L-BFGS in torch on standardised features (mean / std of the training fold). The penalty
  is chosen per fold on an inner stratified hold-out (a quarter of the training fold) over
  :data:`L2_GRID`, unless one is given.
* **k-NN**: DINO's weighted k-NN: cosine similarity of L2-normalised features, the ``k``
  (default 20, capped at the training size) nearest training rows vote for their class with
  weight ``exp(sim / 0.07)``.

Features are the stored ``cls`` or, for dense tables, ``cls+meanpatch``: CLS concatenated
with the mean of the row's patch tokens (DINOv2's linear-evaluation input).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from featurestore.errors import ConfigError

FEATURES = ("cls", "cls+meanpatch")
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # on the mean cross-entropy of standardised features
KNN_K = 20
KNN_TEMPERATURE = 0.07  # DINO's temperature for weighted k-NN voting
_SHOW = 5
_SMALL = 4_000_000  # feature matrices below this many values are probed on one thread


# -- labels ----------------------------------------------------------------------------


def read_label_file(path: str | Path) -> tuple[pa.Table, str]:
    """A label table (``key`` and ``label`` as strings) and its key, read by
    :func:`featurestore.readers.read_labels` (``id`` when the file has that column, else
    ``uri``). Rows with an empty label are left out.

    Raises:
        ConfigError: Missing file, unknown format, no ``label`` / ``id`` / ``uri`` column,
            or empty / repeated keys.
    """
    from featurestore.readers import read_labels

    t, key = read_labels(path, text_columns=("label",))
    if "label" not in t.column_names:
        raise ConfigError(
            f"label file {str(path)!r} lacks the column(s) label (it has: {', '.join(t.column_names)}). "
            "Fix: one row per image with columns id (the row id, SHA-256 of the file) or uri (the path as stored), and label."
        )
    out = pa.table({key: t.column(key), "label": t.column("label").cast(pa.string())})
    return out.filter(pc.is_valid(out.column("label"))), key


def class_order(names: Sequence[str]) -> list[str]:
    """Distinct class names, numerically when they all are integers ("2" before "10")."""
    uniq = sorted(set(names))
    if all(re.fullmatch(r"-?\d+", n) for n in uniq):
        return sorted(uniq, key=int)
    return uniq


# -- data ------------------------------------------------------------------------------


@dataclass
class ProbeData:
    """Features and integer labels of the labelled rows of one table."""

    x: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n,) int64 index into classes
    classes: list[str]
    ids: list[str]
    table: str
    model_hash: str
    version: int
    key: str
    labelled: int  # rows of the label file
    features: str


def _mean_patches(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n, P) float32 mean of each row's patch tokens, from ``list<fixed_size_list<f16, P>>``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    width = arr.type.value_type.list_size
    counts = arr.value_lengths().to_numpy(zero_copy_only=False)
    if arr.null_count or (counts == 0).any():
        raise ConfigError("some rows have no patch tokens, so their mean patch is undefined. Fix: use --features cls.")
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)  # (sum N, P) f16
    sums = np.add.reduceat(flat.astype(np.float32), np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)
    return sums / counts[:, None].astype(np.float32)


def load_probe_data(store: Any, model: str, labels: str | Path, features: str = "cls", version: int | str | None = None) -> ProbeData:
    """Join ``labels`` to ``model``'s table (pinned at its latest version) and read the features.

    Raises:
        ConfigError: Bad label file, no labelled row in the table, or ``cls+meanpatch`` on a
            table without patch tokens.
    """
    from featurestore.readers import FeatureDataset

    if features not in FEATURES:
        raise ConfigError(f"--features {features!r} is not one of {', '.join(FEATURES)}.")
    lab, key = read_label_file(labels)
    ds = FeatureDataset(
        store, model, columns=["cls"], labels=lab, label_key=key, label_columns=["label"], drop_missing_labels=True, version=version
    )
    if features == "cls+meanpatch" and "patches" not in ds.schema.names:
        raise ConfigError(
            f"--features cls+meanpatch needs patch tokens, but table {ds.table_name} was extracted without --dense. "
            "Fix: use --features cls, or extract again with --dense."
        )
    if len(ds) == 0:
        sample = lab.column(key).slice(0, _SHOW).to_pylist()
        raise ConfigError(
            f"none of the {lab.num_rows} labelled {key}s of {str(labels)!r} is a row of table {ds.table_name} "
            f"(e.g. {sample}). Fix: label the stored rows: ids are SHA-256 of the file bytes, uris the paths as extracted "
            "(see `featurestore export --format parquet --columns uri`)."
        )
    if features == "cls":
        got = ds.to_numpy(["cls", "label"])
        x, names = got["cls"].astype(np.float32, copy=False), [str(v) for v in got["label"]]
    else:
        xs, names = [], []
        for chunk in ds.iter_arrow(["cls", "patches", "label"]):
            cls = chunk.column("cls").combine_chunks()
            c = cls.flatten().to_numpy(zero_copy_only=False).reshape(len(cls), cls.type.list_size)
            xs.append(np.concatenate([c.astype(np.float32), _mean_patches(chunk.column("patches"))], axis=1))
            names += [str(v) for v in chunk.column("label").to_pylist()]
        x = np.concatenate(xs)
    classes = class_order(names)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[n] for n in names], np.int64)
    return ProbeData(x, y, classes, list(ds.ids), ds.table_name, ds.card.model_hash, ds.version, key, lab.num_rows, features)


# -- folds -----------------------------------------------------------------------------


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of every row: each class spread evenly over the folds.

    Rows of each class are shuffled with ``seed`` and dealt round-robin, continuing the deal
    from class to class so fold sizes differ by at most one overall.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        out[idx] = (offset + np.arange(len(idx))) % folds
        offset += len(idx)
    return out


def _holdout(y: np.ndarray, frac: float, seed: int) -> np.ndarray | None:
    """A boolean validation mask: ``frac`` of each class with ≥ 2 rows (at least one of them)."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) >= 2:
            val[rng.choice(idx, max(1, int(frac * len(idx))), replace=False)] = True
    return val if val.any() and (~val).any() else None


# -- classifiers -----------------------------------------------------------------------


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: minimise mean CE + l2/2·‖W‖² (bias unpenalised).

    Args:
        x: (n, F) standardised features; y: (n,) class indices.

    Returns:
        ``(W (F, C), b (C,))``.
    """
    w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0)
    std = train.std(0, unbiased=False).clamp_min(1e-6)  # constant features stay 0, not inf
    return [(t - mean) / std for t in (train, *others)]


def linear_fold(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, n_classes: int, l2: float | None, seed: int) -> tuple[np.ndarray, float]:
    """Predictions on ``x_te`` of a logistic regression fitted on the training fold, and its L2."""
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    if l2 is None:
        val = _holdout(y_tr, 0.25, seed)
        if val is None:  # too few rows to hold any out: the grid's middle
            l2 = L2_GRID[len(L2_GRID) // 2]
        else:
            a, v = _standardise(xt[~val], xt[val])
            best: tuple[float, float] | None = None
            for lam in L2_GRID[::-1]:  # best validation accuracy, then log-loss; exact ties keep the stronger penalty
                w, b = fit_logreg(a, yt[~val], n_classes, lam)
                logits = v @ w + b
                acc = float((logits.argmax(1) == yt[val]).double().mean())
                nll = float(torch.nn.functional.cross_entropy(logits, yt[val]))
                if best is None or (acc, -nll) > best:
                    best, l2 = (acc, -nll), lam
    a, t = _standardise(xt, torch.from_numpy(x_te))
    w, b = fit_logreg(a, yt, n_classes, float(l2))
    return (t @ w + b).argmax(1).numpy(), float(l2)


def knn_predict(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, n_classes: int, k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE, chunk_rows: int = 1024,
) -> np.ndarray:
    """DINO's weighted k-NN: cosine top-``k`` (capped at the training size) vote with ``exp(sim / T)``."""
    train = torch.nn.functional.normalize(torch.from_numpy(x_tr), dim=1)
    labels = torch.from_numpy(y_tr)
    k = min(k, len(train))
    out = []
    for start in range(0, len(x_te), chunk_rows):  # (chunk, n_train) similarities at a time
        q = torch.nn.functional.normalize(torch.from_numpy(x_te[start : start + chunk_rows]), dim=1)
        sims, idx = (q @ train.T).topk(k, dim=1)  # (c, k)
        votes = torch.zeros(len(q), n_classes, dtype=sims.dtype)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out).numpy() if out else np.empty(0, np.int64)


# -- the probe -------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Cross-validated accuracy of the linear and k-NN probes (``as_dict`` for JSON)."""

    table: str
    model_hash: str
    version: int
    features: str
    feature_dim: int
    key: str
    labelled: int
    matched: int
    classes: list[str]
    class_counts: list[int]
    folds: int
    seed: int
    chance: float  # accuracy of always predicting the largest class
    linear: dict[str, Any] = field(default_factory=dict)
    knn: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(accs: list[float], y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    c = len(classes)
    confusion = np.zeros((c, c), np.int64)  # rows: true class, columns: predicted, pooled over folds
    np.add.at(confusion, (y, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),  # over folds (population std)
        "fold_accuracy": [float(a) for a in accs],
        "per_class": {name: float(a) for name, a in zip(classes, per_class)},
        "confusion": confusion.tolist(),
    }


def run_probe(data: ProbeData, *, folds: int = 5, seed: int = 0, l2: float | None = None, k: int = KNN_K) -> ProbeResult:
    """Stratified ``folds``-fold CV of the linear and k-NN probes on ``data``.

    Raises:
        ConfigError: Fewer than 2 classes, a class with fewer rows than folds, bad options.
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds.")
    if k < 1:
        raise ConfigError(f"k-NN k={k}: must be at least 1.")
    if l2 is not None and not l2 > 0:
        raise ConfigError(f"--l2 {l2}: the penalty must be positive (or left out to choose it by validation).")
    counts = np.bincount(data.y, minlength=len(data.classes))
    if len(data.classes) < 2:
        raise ConfigError(
            f"the {len(data.y)} labelled rows of table {data.table} that matched all have the label {data.classes[0]!r}: "
            "a probe needs at least 2 classes. Fix: label rows of other classes too."
        )
    small = [f"{c!r} ({n})" for c, n in zip(data.classes, counts) if n < folds]
    if small:
        raise ConfigError(
            f"{len(data.y)} of {data.labelled} labelled rows matched table {data.table}, but class(es) {', '.join(small[:_SHOW])} "
            f"have fewer rows than --folds {folds}. Fix: pass --folds {max(2, int(counts.min()))} or fewer, or label more rows of those classes."
        )
    with _threads(1 if data.x.size < _SMALL else None):
        linear, knn = _cross_validate(data, folds, seed, l2, k)
    return ProbeResult(
        table=data.table, model_hash=data.model_hash, version=data.version, features=data.features,
        feature_dim=int(data.x.shape[1]), key=data.key, labelled=data.labelled, matched=len(data.y),
        classes=data.classes, class_counts=counts.tolist(), folds=folds, seed=seed,
        chance=float(counts.max() / counts.sum()), linear=linear, knn=knn,
    )


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (None: as is). Small probes take hundreds of tiny L-BFGS
    steps, where synchronising threads costs far more than the arithmetic (10-100x slower
    with 2 threads on a busy machine)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cross_validate(data: ProbeData, folds: int, seed: int, l2: float | None, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    fold = stratified_folds(data.y, folds, seed)
    pred_lin = np.empty_like(data.y)
    pred_knn = np.empty_like(data.y)
    acc_lin, acc_knn, l2s = [], [], []
    for f in range(folds):
        te, tr = fold == f, fold != f
        p, lam = linear_fold(data.x[tr], data.y[tr], data.x[te], len(data.classes), l2, seed + f)
        pred_lin[te] = p
        pred_knn[te] = knn_predict(data.x[tr], data.y[tr], data.x[te], len(data.classes), k)
        acc_lin.append(float((p == data.y[te]).mean()))
        acc_knn.append(float((pred_knn[te] == data.y[te]).mean()))
        l2s.append(lam)
    linear = _summary(acc_lin, data.y, pred_lin, data.classes)
    # "validation": the best of L2_GRID on a quarter of each training fold held out
    linear.update(l2=l2s, l2_chosen_by="given" if l2 is not None else "validation")
    knn = _summary(acc_knn, data.y, pred_knn, data.classes)
    knn.update(k=int(min(k, int((fold != 0).sum()))), temperature=KNN_TEMPERATURE)
    return linear, knn


def probe(
    store: Any, model: str, labels: str | Path, *, features: str = "cls", folds: int = 5, seed: int = 0,
    l2: float | None = None, k: int = KNN_K, version: int | str | None = None,
) -> ProbeResult:
    """Cross-validated linear (logistic regression) and k-NN probes of ``model``'s features.

    Args:
        store: store directory, ``Store`` or ``FeatureStore``.
        model: table name, model hash (prefix) or backbone name.
        labels: ``.csv`` / ``.tsv`` / ``.parquet`` with ``id`` or ``uri``, and ``label``.
        features: ``cls`` or ``cls+meanpatch`` (dense tables).
        folds: stratified folds (every class needs at least this many rows).
        seed: seeds the folds and the inner validation split.
        l2: fixed L2 penalty; None chooses one per fold from :data:`L2_GRID`.
        k: neighbours for the k-NN probe (capped at the training size).
        version: probe this table version (number or tag) instead of the latest.

    Returns:
        :class:`ProbeResult`: accuracy mean ± std over folds, per-class accuracy and the
        confusion matrix (pooled over folds) for both probes; ``matched`` of ``labelled``
        label rows found in the table.
    """
    return run_probe(load_probe_data(store, model, labels, features, version), folds=folds, seed=seed, l2=l2, k=k)
