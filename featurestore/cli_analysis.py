"""CLI for the analysis readers: ``featurestore probe``, ``cluster`` and ``show patches|search|map``.

Wired into :mod:`featurestore.cli` through ``_COMMAND_MODULES``; errors are
:class:`~featurestore.errors.FeatureStoreError` subclasses, which the CLI's ``main`` turns
into exit code 2 with the message.
"""

from __future__ import annotations

import argparse
from typing import Any

from featurestore.errors import ConfigError


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cmd_probe(args: argparse.Namespace) -> int:
    from featurestore.cli import _console, _print_json, _table
    from featurestore.probe import probe

    res = probe(
        args.store, args.model, args.labels, features=args.features, folds=args.folds, seed=args.seed, l2=args.l2, k=args.knn_k,
        version=args.version,
    )
    if args.json:
        _print_json(res.as_dict())
        return 0
    lin, knn = res.linear, res.knn
    _console().print(
        f"{res.table} v{res.version} · {res.features} ({res.feature_dim} dims) · {res.matched} rows matched of "
        f"{res.labelled} labelled (by {res.key}) · {len(res.classes)} classes · {res.folds}-fold CV, seed {res.seed} · "
        f"chance {_pct(res.chance)}",
        markup=False,
        highlight=False,
    )
    l2 = "/".join(f"{v:g}" for v in lin["l2"])
    _table(
        "probe accuracy (mean ± std over folds)",
        ["probe", "accuracy", "folds", "settings"],
        [
            ("linear (logistic regression)", f"{_pct(lin['accuracy_mean'])} ± {_pct(lin['accuracy_std'])}",
             " ".join(_pct(a) for a in lin["fold_accuracy"]), f"L2 {l2} ({lin['l2_chosen_by']})"),
            (f"k-NN (k={knn['k']}, cosine)", f"{_pct(knn['accuracy_mean'])} ± {_pct(knn['accuracy_std'])}",
             " ".join(_pct(a) for a in knn["fold_accuracy"]), f"exp(sim/{knn['temperature']})"),
        ],
    )
    _table(
        "per-class accuracy",
        ["class", "rows", "linear", "k-NN"],
        [(c, n, _pct(lin["per_class"][c]), _pct(knn["per_class"][c])) for c, n in zip(res.classes, res.class_counts)],
    )
    if len(res.classes) <= 20:
        _table(
            "confusion matrix of the linear probe (rows: true, columns: predicted; pooled over folds)",
            ["true \\ pred", *res.classes],
            [(c, *row) for c, row in zip(res.classes, lin["confusion"])],
        )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from featurestore.cli import _console, _print_json, _table
    from featurestore.cluster import cluster

    res = cluster(args.store, args.model, args.k, seed=args.seed, max_iter=args.max_iter)
    if args.json:
        _print_json(res.as_dict())
        return 0
    c = _console()
    where = (
        f"written → table version {res.version}; centroids in table {res.centroids_table}" if res.written else "not written (see the note)"
    )
    c.print(
        f"k-means k={res.k} seed={res.seed} on {res.rows} rows of {res.table} (v{res.source_version}): "
        f"{res.iterations} iterations{'' if res.converged else ' (not converged)'}, mean cosine distance {res.mean_dist:.4f}\n"
        f"columns {res.column}, {res.dist_column} {where}",
        markup=False,
        highlight=False,
    )
    _table("cluster sizes", ["cluster", "rows"], list(enumerate(res.sizes)))
    if res.note:
        c.print(f"note: {res.note}", markup=False, highlight=False)
    return 0


def _print_picture(args: argparse.Namespace, info: dict[str, Any], what: str) -> None:
    from featurestore.cli import _console, _print_json

    if args.json:
        _print_json(info)
    else:
        _console().print(f"{what} → {info['path']} ({info['width']}x{info['height']} px)", markup=False, highlight=False)


def cmd_show_patches(args: argparse.Namespace) -> int:
    from featurestore.pictures import patch_picture

    threshold = None if args.no_mask else args.threshold
    info = patch_picture(args.store, args.model, args.image, args.output, threshold=threshold, upsample=args.upsample, alpha=args.alpha)
    _print_picture(args, info, f"patch PCA of {args.image} ({info['grid'][0]}x{info['grid'][1]} tokens, {_pct(info['foreground'])} foreground)")
    return 0


def cmd_show_search(args: argparse.Namespace) -> int:
    from featurestore.pictures import search_picture

    info = search_picture(
        args.store, args.model, args.output, row_id=args.id, image=args.image, k=args.k, cols=args.cols, version=args.version,
        roots=args.root,
    )
    _print_picture(args, info, f"query {info['query']['id'][:12]} and {len(info['hits'])} nearest rows")
    if info["missing"]:
        import sys

        fix = "check the --root mappings" if args.root else "if the files moved, pass --root OLD=NEW"
        sys.stderr.write(
            f"featurestore: warning: {len(info['missing'])} sources are missing, drawn as 'missing' cells "
            f"(Fix: {fix}):\n" + "".join(f"  {u}\n" for u in info["missing"])
        )
    return 0


def cmd_show_map(args: argparse.Namespace) -> int:
    from featurestore.pictures import map_picture

    if args.labels is not None and args.color_by is None:
        args.color_by = "label"
    if args.color_by != "cluster" and args.k is not None:
        raise ConfigError("--k picks the cluster column; it goes with --color-by cluster.")
    info = map_picture(
        args.store, args.model, args.output, color_by=args.color_by, labels=args.labels, k=args.k, method=args.method,
        max_points=args.max_points, seed=args.seed, version=args.version,
    )
    _print_picture(args, info, f"{info['method'].upper()} map of {info['points']} rows")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", "-s", required=True, help="LanceDB store directory")
    p.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")


def add_commands(sub: Any) -> None:
    """Register ``probe``, ``cluster`` and ``show`` on the main parser's subparsers."""
    from featurestore.paths import add_root_option

    pr = sub.add_parser(
        "probe",
        help="cross-validated linear and k-NN probes of stored features against a label file",
        description="Stratified k-fold CV of a multinomial logistic regression (L2, L-BFGS, standardised features, "
        "penalty chosen by inner validation) and DINO's weighted k-NN (cosine, votes exp(sim/0.07)).",
    )
    _common(pr)
    pr.add_argument("--labels", "-l", required=True, help=".csv/.tsv/.parquet with columns id (or uri) and label")
    pr.add_argument("--folds", type=int, default=5, help="stratified folds (default 5)")
    pr.add_argument("--features", choices=["cls", "cls+meanpatch"], default="cls", help="cls, or cls + mean patch token (dense tables)")
    pr.add_argument("--seed", type=int, default=0, help="seeds the folds and the inner validation split (default 0)")
    pr.add_argument("--version", "--tag", dest="version", help="probe this table version (number or tag; default the latest)")
    pr.add_argument("--l2", type=float, help="fixed L2 penalty (default: chosen per fold by inner validation)")
    pr.add_argument("--knn-k", type=int, default=20, help="neighbours for the k-NN probe (default 20, capped at the training size)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_probe)

    cl = sub.add_parser(
        "cluster",
        help="k-means on stored cls; writes cluster_k{K} and cluster_k{K}_dist columns into the feature table",
        description="Spherical k-means (cosine, k-means++ init, seeded). Assignments and cosine distances to the centroid "
        "become columns of the feature table (a new version); centroids go to the table <model table>-centroids-k{K}.",
    )
    _common(cl)
    cl.add_argument("--k", "-k", type=int, required=True, help="number of clusters")
    cl.add_argument("--seed", type=int, default=0, help="seeds k-means++ (default 0): same rows, k and seed, same clusters")
    cl.add_argument("--max-iter", type=int, default=100, help="Lloyd iterations at most (default 100)")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_cluster)

    sh = sub.add_parser("show", help="pictures (PNG) of stored features: patches, search, map (needs matplotlib)")
    what = sh.add_subparsers(dest="picture", required=True)

    pa_ = what.add_parser("patches", help="DINOv2-style PCA picture of an image's stored patch tokens")
    pa_.add_argument("image", help="an image file whose content is stored in the (dense) table")
    _common(pa_)
    pa_.add_argument("--output", "-o", required=True, help="PNG file to write")
    pa_.add_argument("--threshold", type=float, default=0.0, help="foreground: first component above this many std (default 0)")
    pa_.add_argument("--no-mask", action="store_true", help="keep every token (no background removal)")
    pa_.add_argument("--upsample", choices=["bilinear", "nearest"], default="bilinear", help="grid to pixels (default bilinear)")
    pa_.add_argument("--alpha", type=float, default=0.8, help="opacity of the colours over the image (default 0.8)")
    pa_.add_argument("--json", action="store_true")
    pa_.set_defaults(func=cmd_show_patches)

    se = what.add_parser("search", help="a stored query and its nearest stored rows (cosine of cls) in a grid")
    _common(se)
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--id", help="a stored row id (or a unique prefix of >= 6 hex)")
    q.add_argument("--image", help="an image file whose content is stored")
    se.add_argument("-k", type=int, default=8, help="neighbours to show (default 8)")
    se.add_argument("--version", "--tag", dest="version", help="table version (number or tag; default the latest)")
    se.add_argument("--cols", type=int, default=5, help="grid columns (default 5)")
    se.add_argument("--output", "-o", required=True, help="PNG file to write")
    add_root_option(se)
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_show_search)

    mp = what.add_parser("map", help="2-D map (PCA, or UMAP if installed) of stored cls, coloured by label or cluster")
    _common(mp)
    mp.add_argument("--color-by", choices=["label", "cluster"], help="colour by --labels or by a cluster_k{K} column")
    mp.add_argument("--labels", "-l", help=".csv/.tsv/.parquet with columns id (or uri) and label")
    mp.add_argument("--k", "-k", type=int, help="with --color-by cluster: which cluster_k{K} column (default: the only one)")
    mp.add_argument("--method", choices=["auto", "pca", "umap"], default="auto", help="auto = UMAP when installed, else PCA")
    mp.add_argument("--max-points", type=int, default=20000, help="rows drawn at most, a seeded sample beyond (default 20000)")
    mp.add_argument("--seed", type=int, default=0)
    mp.add_argument("--version", "--tag", dest="version", help="table version (number or tag; default the latest)")
    mp.add_argument("--output", "-o", required=True, help="PNG file to write")
    mp.add_argument("--json", action="store_true")
    mp.set_defaults(func=cmd_show_map)
