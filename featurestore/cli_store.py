"""CLI for looking after a store: ``tag``, ``compact``, ``cleanup``, ``verify``, ``doctor`` and ``manifest``.

Wired into :mod:`featurestore.cli` through ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_tag(args: argparse.Namespace) -> int:
    from featurestore.cli import _console, _print_json
    from featurestore.versions import tag_version

    v = tag_version(args.store, args.model, args.name, args.version)
    if args.json:
        _print_json({"model": args.model, "tag": args.name, "version": v})
    else:
        _console().print(f"tagged version {v} of {args.model} as {args.name}", markup=False, highlight=False)
    return 0


def _report(rows: list[dict[str, Any]], as_json: bool, title: str, cols: list[str]) -> None:
    from featurestore.cli import _print_json, _table

    if as_json:
        _print_json(rows)
    else:
        _table(title, cols, [[r.get(c) for c in cols] for r in rows])


def cmd_compact(args: argparse.Namespace) -> int:
    from featurestore.maintenance import compact
    from featurestore.store import Store

    rows = compact(Store(args.store), args.model, cleanup=not args.keep_versions, tag=args.tag)
    _report(rows, args.json, f"compacted {args.store}", ["table", "version_before", "version", "versions", "files_before", "files", "note"])
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from featurestore.maintenance import cleanup, parse_duration
    from featurestore.store import Store

    rows = cleanup(Store(args.store), args.model, older_than=parse_duration(args.older_than))
    _report(rows, args.json, f"old versions cleaned in {args.store}", ["table", "versions_before", "versions", "note"])
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from featurestore.catalog_cache import cached
    from featurestore.cli import _console, _print_json

    def compute() -> dict[str, Any]:
        from featurestore.manifest import build_manifest
        from featurestore.store import Store

        return build_manifest(Store(args.store)).model_dump(mode="json")

    # the manifest names the store as given: the path is part of the key
    manifest = cached(args.store, f"manifest:{args.store}", compute)  # no LanceDB import while the store is unchanged
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if args.json or not args.output:
        _print_json(manifest)
    else:
        _console().print(
            f"{len(manifest['tables'])} tables, {manifest['rows']} feature rows → {args.output}", markup=False, highlight=False
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from featurestore.cli import _console, _print_json
    from featurestore.verify import verify

    rep = verify(
        args.store, args.model, sample=args.sample, weights=args.weights, seed=args.seed,
        atol=args.atol, patch_cos=args.patch_cos, device=args.device, roots=args.root,
    )
    if args.json:
        _print_json(rep.as_dict())
    else:
        c = _console()
        status = "ok" if rep.ok else "FAILED"
        c.print(f"verify {rep.table} (model {rep.model_hash[:12]}, weights {rep.weights}): {status}", markup=False, highlight=False)
        c.print(rep.message, markup=False, highlight=False, soft_wrap=True)
        for reason, n in rep.skipped.items():
            c.print(f"  skipped {n}: {reason}", markup=False, highlight=False)
        for uri in rep.missing:
            c.print(f"    missing: {uri}", markup=False, highlight=False, soft_wrap=True)
    return 0 if rep.ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from featurestore.doctor import doctor
    from featurestore.store import Store

    checks = [c.as_dict() for c in doctor(Store(args.store), repair=args.repair)]
    cols = ["table", "key", "rows", "duplicate_keys", "extra_rows"] + (["removed"] if args.repair else [])
    _report(checks, args.json, f"keys stored more than once in {args.store}", cols)
    left = sum(c["extra_rows"] - c["removed"] for c in checks)
    if left and not args.json:
        from featurestore.cli import _console

        _console().print(f"{left} extra rows. Fix: featurestore doctor -s {args.store} --repair", markup=False, highlight=False)
    return 1 if left else 0


def add_commands(sub: Any) -> None:
    """Add ``tag``, ``compact``, ``cleanup``, ``verify`` and ``manifest`` to the ``featurestore`` subparsers."""
    from featurestore.paths import add_root_option

    tg = sub.add_parser("tag", help="tag a version of a model's table (readers pin it with --version NAME)")
    tg.add_argument("name", help="the tag")
    tg.add_argument("--store", "-s", required=True)
    tg.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    tg.add_argument("--version", type=int, help="version to tag (default: the latest)")
    tg.add_argument("--json", action="store_true")
    tg.set_defaults(func=cmd_tag)

    co = sub.add_parser("compact", help="rewrite tables into few files; then drop the files of untagged old versions")
    co.add_argument("--store", "-s", required=True)
    co.add_argument("--model", "-m", help="only this model's table (default: every table)")
    co.add_argument("--tag", metavar="NAME", help="name the tag this run creates on each compacted version (as extract --tag)")
    co.add_argument("--keep-versions", action="store_true", help="compact only; keep every old version")
    co.add_argument("--json", action="store_true")
    co.set_defaults(func=cmd_compact)

    cl = sub.add_parser("cleanup", help="delete the files of old versions; tagged versions (and later ones) are kept")
    cl.add_argument("--store", "-s", required=True)
    cl.add_argument("--model", "-m", help="only this model's table (default: every table)")
    cl.add_argument("--older-than", default="7d", help="versions committed longer ago than this: 7d, 12h, 30m, 0 (default 7d)")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_cleanup)

    ve = sub.add_parser("verify", help="re-extract a sample of stored rows from their sources and report drift (exit 1 on drift)")
    ve.add_argument("--store", "-s", required=True)
    ve.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    ve.add_argument("--sample", type=int, default=32, help="rows to re-extract, chosen at random (seeded; default 32)")
    ve.add_argument("--weights", help="load the weights from here instead of where the card says")
    ve.add_argument("--seed", type=int, default=0)
    ve.add_argument("--atol", type=float, default=1e-4, help="largest allowed |cls difference| (default 1e-4)")
    ve.add_argument("--patch-cos", type=float, default=0.999, help="smallest allowed cosine of a patch token (default 0.999)")
    ve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    add_root_option(ve)
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=cmd_verify)

    dr = sub.add_parser("doctor", help="find keys stored more than once (tables written by older versions); --repair keeps one row each")
    dr.add_argument("--store", "-s", required=True)
    dr.add_argument("--repair", action="store_true", help="delete the extra rows (keeps the earliest created_at), one commit per table")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)

    ma = sub.add_parser("manifest", help="describe a store as JSON: tables, cards, rows, versions, tags, content digests")
    ma.add_argument("--store", "-s", required=True)
    ma.add_argument("--output", "-o", help="write it to this file (DVC: a metrics file)")
    ma.add_argument("--json", action="store_true", help="also print it when writing a file")
    ma.set_defaults(func=cmd_manifest)
