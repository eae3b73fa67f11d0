"""CLI for domain adapters: ``featurestore adapt fit|apply|list`` and ``featurestore adapters``.

Wired into :mod:`featurestore.cli` through ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_adapters(args: argparse.Namespace) -> int:
    from featurestore.cli import _print_json, _table
    from featurestore.plugins import get_host

    reg = get_host().adapters
    items = [{"name": e.name, "plugin": e.plugin, **e.metadata} for e in reg.entries() if e.name in reg.names()]
    if args.json:
        _print_json(items)
    else:
        rows = [(a["name"], json.dumps(a.get("params") or {}), "yes" if a.get("labels") else "no", a["plugin"], a.get("summary")) for a in items]
        _table("adapters", ["name", "params (defaults)", "labels", "plugin", "summary"], rows)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from featurestore.adapters import fit_adapter
    from featurestore.cli import _console, _print_json
    from featurestore.store import Store

    spec = args.adapter + ("" if not args.param else (":" if ":" not in args.adapter else ",") + ",".join(args.param))
    card = fit_adapter(Store(args.store), args.model, spec, where=args.where, labels=args.labels, max_rows=args.max_rows)
    if args.json:
        _print_json(card.model_dump(mode="json"))
        return 0
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in card.metrics.items() if k != "classes")
    _console().print(
        f"fitted {card.name} {json.dumps(card.params)} on {card.fit_rows} rows of {card.base_table} v{card.fit_version}: "
        f"adapter {card.adapter_hash[:12]}, {card.in_dim} → {card.out_dtype}[{card.out_dim}]"
        + (f"; {metrics}" if metrics else "")
        + f". Apply: featurestore adapt apply -s {args.store} --adapter {card.adapter_hash[:12]}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from featurestore.adapters import apply_adapter
    from featurestore.cli import _console, _print_json
    from featurestore.store import Store

    res = apply_adapter(Store(args.store), args.adapter, model=args.model)
    if args.json:
        _print_json(res.as_dict())
        return 0
    _console().print(
        f"{res.written} rows adapted from {res.base_table} v{res.base_version} into {res.table} "
        f"({res.skipped_existing} already there; {res.rows} rows in all)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from featurestore.adapters import adapters_summary
    from featurestore.cli import _print_json, _table
    from featurestore.store import Store

    items = adapters_summary(Store(args.store))
    if args.json:
        _print_json(items)
        return 0
    rows = [
        (a["adapter_hash"][:12], a["name"], json.dumps(a["params"]), a["base_table"], a["out"], a["fit_rows"], a["applied_rows"], a["table"])
        for a in items
    ]
    _table(f"adapters in {args.store}", ["hash", "name", "params", "base table", "out", "fit rows", "rows", "table"], rows)
    return 0


def add_commands(sub: Any) -> None:
    """Add ``adapt`` (fit, apply, list) and ``adapters`` to the ``featurestore`` subparsers."""
    al = sub.add_parser("adapters", help="list registered domain adapters (plugins)")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_adapters)

    ad = sub.add_parser("adapt", help="fit domain adapters on stored features, apply them, list them")
    what = ad.add_subparsers(dest="adapt_command", required=True, metavar="{fit,apply,list}")
    fi = what.add_parser("fit", help="fit an adapter on a model's stored cls features; saves it in the store")
    fi.add_argument("--store", "-s", required=True)
    fi.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    fi.add_argument("--adapter", "-a", required=True, help="NAME or NAME:key=value,… (see featurestore adapters)")
    fi.add_argument("--param", "-p", action="append", metavar="KEY=VALUE", help="an adapter parameter (repeatable), e.g. -p dim=64")
    fi.add_argument("--labels", "-l", help="label file (.csv/.tsv/.parquet: id or uri, label) for adapters trained on labels")
    fi.add_argument("--where", help="LanceDB SQL filter choosing the fit rows, e.g. \"video_id IS NULL\"")
    fi.add_argument("--max-rows", type=int, help="fit on a seeded random subset of this many rows")
    fi.add_argument("--json", action="store_true", help="print the adapter card as JSON")
    fi.set_defaults(func=cmd_fit)

    ap = what.add_parser("apply", help="write a fitted adapter's output for every stored row to its own table")
    ap.add_argument("--store", "-s", required=True)
    ap.add_argument("--adapter", "-a", required=True, help="adapter hash (prefix), adapted table name, or name when one fit has it")
    ap.add_argument("--model", "-m", help="the model you expect it to apply to: another model than its base is an error")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=cmd_apply)

    ls = what.add_parser("list", help="the fitted adapters of a store")
    ls.add_argument("--store", "-s", required=True)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
