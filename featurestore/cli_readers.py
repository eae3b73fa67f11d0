"""CLI for the readers: ``featurestore export`` and ``featurestore versions``.

Wired into :mod:`featurestore.cli` through ``_COMMAND_MODULES``; errors are
:class:`~featurestore.errors.FeatureStoreError` subclasses, which the CLI's ``main``
turns into exit code 2 with the message.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from featurestore.errors import ConfigError


def _read_ids(spec: str | None) -> list[str] | None:
    """``@file`` (one id per line) or a comma-separated list; None stays None."""
    if spec is None:
        return None
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise ConfigError(f"--ids {spec!r}: no such file. Fix: @path to a file with one id per line.")
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [s.strip() for s in spec.split(",") if s.strip()]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - loop always returns


def cmd_export(args: argparse.Namespace) -> int:
    from featurestore.cli import _console, _print_json
    from featurestore.readers import FeatureDataset

    fmt = args.format or Path(args.output).suffix.lstrip(".").lower()
    if fmt not in ("parquet", "npy"):
        raise ConfigError(f"cannot tell the format of {args.output!r}. Fix: --format parquet or --format npy.")
    t0 = time.perf_counter()
    ds = FeatureDataset(
        args.store,
        args.model,
        columns=[c.strip() for c in args.columns.split(",") if c.strip()],
        ids=_read_ids(args.ids),
        where=args.where,
        layer=args.layer,
        version=args.version,
        expected_hash=args.expect_hash,
        labels=args.labels,
        label_key=args.label_key,
        drop_missing_labels=args.drop_missing_labels,
    )
    summary: dict[str, Any] = ds.export(args.output, fmt)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        _print_json(summary)
        return 0
    c = _console()
    tag = f" (tag {ds.tag})" if ds.tag else ""
    c.print(
        f"{summary['rows']} rows of table {ds.table_name} v{ds.version}{tag} (model {ds.card.model_hash[:12]}), "
        f"columns {', '.join(summary['columns'])} → {fmt} in {summary['seconds']:.1f}s",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for f in summary["files"]:
        c.print(f"  {f['path']}  {_human(f['bytes'])}", markup=False, highlight=False, soft_wrap=True)
    return 0


def _one_version(info: dict[str, Any], version: str, store: str, model: str) -> dict[str, Any]:
    """``info`` narrowed to one version, named by number or tag (``versions --tag NAME``)."""
    tags = info["tags"]
    if version.strip().isdigit():
        v, tag = int(version), None
    elif version in tags:
        v, tag = tags[version], version
    else:
        known = ", ".join(f"{k} (v{n})" for k, n in sorted(tags.items())) or "none"
        raise ConfigError(
            f"table {info['table']} has no tag {version!r} (tags: {known}); `versions --tag` shows a tagged version. "
            f"Fix: to create the tag, featurestore tag {version} -s {store} -m {model} [--version N]."
        )
    rows = [r for r in info["versions"] if r["version"] == v]
    if not rows:
        have = [r["version"] for r in info["versions"]]
        raise ConfigError(f"table {info['table']} has no version {v} (it has {', '.join(map(str, have))}). Fix: pass one of them, or a tag.")
    return {**info, "versions": rows, "selected": {"version": v, "tag": tag}}


def cmd_versions(args: argparse.Namespace) -> int:
    from featurestore.catalog_cache import cached
    from featurestore.cli import _print_json, _table

    if args.at is not None:  # the old `versions --tag NAME --at N`, which wrote a tag
        raise ConfigError(
            f"versions only reads; it no longer tags (--at {args.at}). "
            f"Fix: featurestore tag NAME -s {args.store} -m {args.model} --version {args.at}."
        )

    def compute() -> dict[str, Any]:
        from featurestore.versions import table_versions

        return table_versions(args.store, args.model)

    info = cached(args.store, f"versions:{args.model}", compute)  # no LanceDB import while the store is unchanged
    if args.version is not None:
        info = _one_version(info, args.version, args.store, args.model)
    if args.json:
        _print_json(info)
        return 0
    tags_at: dict[int, list[str]] = {}
    for name, v in info["tags"].items():
        tags_at.setdefault(v, []).append(name)
    rows = [(v["version"], v["timestamp"], v["rows"], ", ".join(sorted(tags_at.get(v["version"], [])))) for v in info["versions"]]
    _table(f"versions of {info['table']} (model {info['model_hash'][:12]})", ["version", "timestamp", "rows", "tags"], rows)
    return 0


def add_commands(sub: Any) -> None:
    """Add ``export`` and ``versions`` to the ``featurestore`` subparsers."""
    ex = sub.add_parser("export", help="write a model's features to Parquet or .npy (pinned to a version)")
    ex.add_argument("--store", "-s", required=True)
    ex.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    ex.add_argument("--output", "-o", required=True, help="the .parquet file, or the .npy file of the CLS matrix")
    ex.add_argument("--format", "-f", choices=("parquet", "npy"), help="default: from the suffix of --output")
    ex.add_argument("--columns", default="cls", help="comma-separated: cls, patches, uri, … (default cls)")
    ex.add_argument("--where", help="LanceDB SQL filter, e.g. \"video_id IS NULL\"")
    ex.add_argument("--ids", help="only these ids, in this order: id,id,… or @file (one per line)")
    ex.add_argument("--version", "--tag", dest="version", help="table version number or tag (default: the latest)")
    ex.add_argument("--expect-hash", help="fail unless the model hash starts with this (≥ 6 hex digits)")
    ex.add_argument("--layer", type=int, help="--layers tables: only this stored block's slice")
    ex.add_argument("--labels", help="label table (.parquet/.csv/.tsv) to join; its columns go to Parquet")
    ex.add_argument(
        "--label-key", choices=("id", "uri"),
        help="join labels on id or uri (default: id when the label file has an id column, else uri, as probe does)",
    )
    ex.add_argument("--drop-missing-labels", action="store_true", help="leave out rows without a label instead of failing")
    ex.add_argument("--json", action="store_true", help="print the summary as JSON")
    ex.set_defaults(func=cmd_export)

    ve = sub.add_parser(
        "versions", help="list the versions and tags of a model's table (--tag NAME: only that version)",
        description="Reads only: to tag a version, run `featurestore tag NAME -s STORE -m MODEL [--version N]`.",
    )
    ve.add_argument("--store", "-s", required=True)
    ve.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    ve.add_argument("--version", "--tag", dest="version", help="show only this version (number or tag), as other reading commands pin it")
    ve.add_argument("--at", type=int, help=argparse.SUPPRESS)  # the old write form: refused with the new command
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=cmd_versions)
