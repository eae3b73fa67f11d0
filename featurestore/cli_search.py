"""CLI for search: ``featurestore search`` (text, image, id, vector, patches) and ``featurestore index``.

Wired into :mod:`featurestore.cli` through ``_COMMAND_MODULES``; errors are
:class:`~featurestore.errors.FeatureStoreError` subclasses, which the CLI's ``main`` turns
into exit code 2 with the message.

``--json`` output, for every kind of query (text included): an object ``{hits, method, table,
query, index, params, note}``; ``hits`` are ``{rank, score, uri, id}`` best first, ``method``
is ``"ann"`` (the vector index was used) or ``"exact"``, ``query`` says what was asked
(``{"kind": "text", "text": …}``, ``{"kind": "image", "path": …}`` …).
"""

from __future__ import annotations

import argparse
from typing import Any

from featurestore.errors import ConfigError


def _ann_kw(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "k": args.k, "exact": args.exact, "nprobes": args.nprobes, "refine_factor": args.refine_factor, "ef": args.ef,
        "version": args.version,
    }


def _text(fs: Any, args: argparse.Namespace) -> Any:
    """A text query, encoded by the table's model, searched like any other vector."""
    from featurestore.zeroshot import text_embeddings

    if not args.text.strip():
        raise ConfigError("--text is empty. Fix: describe what to find, e.g. --text 'a photo of a dog'.")
    card, backbone = fs.text_backbone(args.model, weights=args.weights, device=args.device, roots=args.root)
    query = text_embeddings(backbone, [args.text])[0]
    return fs.search_vector(card.table, query, query={"kind": "text", "text": args.text}, **_ann_kw(args))


def _describe(res: Any) -> str:
    q = res.query
    what = {
        "text": lambda: f"text {q['text']!r}",
        "image": lambda: f"image {q['path']}",
        "id": lambda: f"id {q['id'][:12]} ({q['uri']})",
        "vector": lambda: f"vector {q.get('path', '')}",
    }
    head = what.get(q["kind"], lambda: q["kind"])()
    if "tokens" in q:
        head = f"{q['tokens']} patch tokens of {head}" + (f" in region {q['region']}" if "region" in q else "")
    if res.method == "ann":
        p = res.params
        how = f"ANN {res.index['kind']} (nprobes {p['nprobes']}, refine {p['refine_factor']}" + (f", ef {p['ef']})" if p["ef"] else ")")
    else:
        how = "exact"
    return f"{head} in {res.table} — {how}"  # a table title: _table prints it literally


def cmd_search(args: argparse.Namespace) -> int:
    from featurestore.api import FeatureStore
    from featurestore.cli import _console, _print_json, _table
    from featurestore.search import load_vector

    if args.region is not None and not args.patches:
        raise ConfigError("--region selects patch tokens: it needs --patches.")
    if args.patches and (args.text is not None or args.vector is not None):
        raise ConfigError("--patches needs --image or --id (the query's patch tokens), not --text or --vector.")
    fs = FeatureStore(args.store)
    if args.text is not None:
        res = _text(fs, args)
    elif args.patches:
        if any(v is not None for v in (args.nprobes, args.refine_factor, args.ef)):
            raise ConfigError("--nprobes / --refine-factor / --ef tune the cls index; patch search takes only --exact.")
        res = fs.search_patches(
            args.model, image=args.image, row_id=args.id, region=args.region, k=args.k, exact=args.exact,
            weights=args.weights, device=args.device, version=args.version, roots=args.root,
        )
    elif args.image is not None:
        res = fs.search_image(args.model, args.image, weights=args.weights, device=args.device, roots=args.root, **_ann_kw(args))
    elif args.id is not None:
        res = fs.search_id(args.model, args.id, **_ann_kw(args))
    else:
        vec = load_vector(args.vector, fs.card(args.model).dim)
        res = fs.search_vector(args.model, vec, query={"kind": "vector", "path": args.vector}, **_ann_kw(args))
    if args.json:
        _print_json(res.as_dict())
        return 0
    _table(_describe(res), ["rank", "score", "uri", "id"], [(h["rank"], f"{h['score']:.4f}", h["uri"], h["id"][:12]) for h in res.hits])
    if res.note:
        _console().print(f"note: {res.note}", markup=False, highlight=False)
    if res.index and res.index["unindexed_rows"] and res.method == "ann":
        _console().print(
            f"note: {res.index['unindexed_rows']} rows were added after the index was built and were searched exactly; "
            f"run `featurestore index` again to include them",
            markup=False,
            highlight=False,
        )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from featurestore.api import FeatureStore
    from featurestore.cli import _console, _print_json

    fs = FeatureStore(args.store)
    if args.drop:
        out = {"dropped": fs.drop_index(args.model), "table": fs.card(args.model).table}
        if args.json:
            _print_json(out)
        else:
            msg = f"dropped index {out['dropped']['name']}" if out["dropped"] else "there was no index"
            _console().print(f"{msg} on {out['table']}: searches are exact", markup=False, highlight=False)
        return 0
    info = fs.index(args.model, kind=args.kind, partitions=args.partitions, sub_vectors=args.sub_vectors)
    if args.json:
        _print_json(info)
    else:
        sub = f", {info['sub_vectors']} sub-vectors" if info["sub_vectors"] else ""
        _console().print(
            f"{info['kind']} index {info['name']} on {info['table']}.cls (cosine): {info['partitions']} partitions{sub}, "
            f"{info['rows']} rows in {info['seconds']:.1f}s",
            markup=False,
            highlight=False,
        )
    return 0


def add_commands(sub: Any) -> None:
    """Register ``search`` and ``index`` on the main parser's subparsers."""
    from featurestore.index_kinds import DEFAULT_KIND, INDEX_KINDS
    from featurestore.paths import add_root_option

    se = sub.add_parser(
        "search",
        help="nearest stored images to a text (CLIP/SigLIP), an image, a stored id or a vector; --patches: by patch tokens",
        description="Cosine kNN over stored cls vectors (through the ANN index when the table has one), or MaxSim "
        "over patch tokens with --patches. A query that is itself stored (--id, or a stored --image) is among the hits.",
    )
    se.add_argument("--store", "-s", required=True)
    se.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", "-t", help="the query, e.g. 'a photo of a dog' (language-aligned models)")
    q.add_argument("--image", help="a query image, encoded by the table's model loaded again")
    q.add_argument("--id", help="a stored row's id (or a unique prefix of >= 6 hex): its stored features are the query")
    q.add_argument("--vector", metavar="FILE", help=".npy file holding one vector of the table's width (D,)")
    se.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    se.add_argument("--exact", action="store_true", help="compare every row even if the table has an ANN index")
    se.add_argument("--version", "--tag", dest="version", help="search this table version (number or tag) instead of the latest")
    se.add_argument("--nprobes", type=int, help="IVF partitions to search with an index (default 20)")
    se.add_argument("--refine-factor", type=int, help="re-rank k*F index candidates with the stored vectors (default per kind)")
    se.add_argument("--ef", type=int, help="HNSW candidate list size (ivf_hnsw_* indexes)")
    se.add_argument("--patches", action="store_true", help="match patch tokens (MaxSim) of --image / --id; needs a --dense table")
    se.add_argument("--region", metavar="X0,Y0,X1,Y1", help="with --patches: only the query tokens under this box (original pixels)")
    se.add_argument("--weights", help="where to load the model from, if not where it was loaded at extraction")
    se.add_argument("--device", default="cpu", help="where to encode a text or image query (default cpu)")
    add_root_option(se)
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_search)

    ix = sub.add_parser("index", help="build the ANN index on a model's cls vectors (cosine); search uses it")
    ix.add_argument("--store", "-s", required=True)
    ix.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    ix.add_argument("--kind", default=DEFAULT_KIND, choices=list(INDEX_KINDS), help=f"index type (default {DEFAULT_KIND})")
    ix.add_argument("--partitions", type=int, help="IVF partitions (default sqrt(rows); HNSW kinds one per ~1M rows)")
    ix.add_argument("--sub-vectors", type=int, help="PQ sub-vectors, must divide the width (default D/8)")
    ix.add_argument("--drop", action="store_true", help="drop the index instead (searches become exact)")
    ix.add_argument("--json", action="store_true")
    ix.set_defaults(func=cmd_index)
