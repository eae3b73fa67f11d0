"""Command line: parses, calls the Python API, prints a table (rich) or ``--json``.

Exit codes: 0 success; 1 the run completed but failed its bar (nothing succeeded, or
``--max-error-rate`` exceeded); 2 bad usage or a featurestore error before/while running.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import warnings
from typing import Any, Iterable, Iterator, Sequence

from featurestore.errors import FeatureStoreError


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _console():
    from rich.console import Console

    return Console()


def _esc(value: Any) -> str:
    """Data (paths, names, messages) inside a rich markup string: printed literally, so a file
    named ``[bold]x.png`` stays ``[bold]x.png`` while our own ``[red]…[/]`` renders."""
    from rich.markup import escape

    return escape(str(value))


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title))  # titles hold paths and queries: data, never markup
    for c in columns:  # headers may be data too (a probe's class names)
        t.add_column(escape(str(c)))
    for r in rows:  # cells are data (paths, plugin metadata), never rich markup
        t.add_row(*("" if v is None else escape(str(v)) for v in r))
    _console().print(t)


# -- commands ------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> int:
    from featurestore.api import FeatureStore

    fs = FeatureStore(args.store)
    summary = fs.extract(
        args.paths,
        backbone=args.backbone,
        weights=args.weights,
        dense=args.dense,
        layers=args.layers,
        sample=args.sample,
        aggregate=[a for spec in args.aggregate or [] for a in _split_aggregators(spec)],
        window=args.window,
        stride=args.stride,
        adapters=args.adapter or [],
        tag=args.tag,
        tag_run=not args.no_tag,
        commit_rows=args.commit_every_rows,
        commit_seconds=args.commit_every_seconds,
        rehash=args.rehash,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        max_error_rate=args.max_error_rate,
        max_pixels=args.max_pixels,
        progress=not args.json and sys.stderr.isatty(),
    )
    # LanceDB is loaded now: answering the usual next commands costs milliseconds here, and
    # saves them a second of imports (featurestore.catalog_cache)
    from featurestore.catalog_cache import warm

    warm(args.store, {"models": fs.models, "errors:None": lambda: _errors_answer(fs, None)})
    if args.json:
        _print_json(summary.model_dump(mode="json"))
    else:
        c = _console()
        c.print(
            f"[bold]{_esc(summary.backbone)}[/] → table [cyan]{_esc(summary.table)}[/] (model {summary.model_hash[:12]}) on {_esc(summary.device)}\n"
            f"inputs {summary.inputs}: written {summary.written}, already stored {summary.skipped_existing}, "
            f"duplicate content {summary.skipped_duplicate}, errors {summary.errors} "
            f"({summary.error_rate:.1%}) in {summary.seconds:.1f}s, {summary.images_per_second:.1f} img/s"
        )
        if summary.tag:
            c.print(f"table version {summary.version} tagged {summary.tag}", markup=False, highlight=False)
        if summary.videos:
            c.print(f"videos {summary.videos}: frame rows written {summary.frames_written}")
        for t in summary.clip_tables:
            c.print(f"clips → table [cyan]{_esc(t)}[/]")
        if summary.clip_tables:
            c.print(f"clip rows written {summary.clips_written}")
        for t, n in summary.adapted_tables.items():
            c.print(f"adapted → table [cyan]{_esc(t)}[/]: {n} rows written")
        for e in summary.error_samples:
            c.print(f"  [red]error[/] {_esc(e.stage)} {_esc(e.error_type)}: {_esc(e.uri)}: {_esc(e.message)}", highlight=False, soft_wrap=True)
        if summary.errors > len(summary.error_samples):
            c.print(f"  … {summary.errors - len(summary.error_samples)} more in the errors table of {_esc(summary.store)}", soft_wrap=True)
        if not summary.ok:
            c.print("[red]run failed:[/] " + ("nothing succeeded" if summary.errors == summary.inputs else f"error rate above {args.max_error_rate}"))
    return 0 if summary.ok else 1


def _catalog(store: str, key: str, read: Any) -> Any:
    """``read(FeatureStore(store))``, answered from the store's catalog cache while the store
    is unchanged (featurestore.catalog_cache: no LanceDB import then)."""
    from featurestore.catalog_cache import cached

    def compute() -> Any:
        from featurestore.api import FeatureStore

        return read(FeatureStore(store))

    return cached(store, key, compute)


def cmd_models(args: argparse.Namespace) -> int:
    models = _catalog(args.store, "models", lambda fs: fs.models())
    if args.json:
        _print_json(models)
    else:
        rows = [
            [m["model_hash"][:12], m["backbone"], m["table"], m["rows"], m["dim"], "yes" if m["dense"] else "no", m["plugin"]]
            for m in models
        ]
        cols = ["hash", "backbone", "table", "rows", "dim", "dense", "plugin"]
        if any(m["adapter"] for m in models):  # the chain model → adapter, only where there is one
            cols.insert(1, "adapted from")
            for r, m in zip(rows, models):
                r.insert(1, f"{m['base_model_hash'][:12]} + {m['adapter']}" if m["adapter"] else "")
        _table(f"models in {args.store}", cols, rows)
    return 0


#: an errors listing of up to this many rows is kept in the catalog cache; a longer one is
#: streamed from the store each time (neither the command nor the cache holds it whole)
ERRORS_CACHED = 1000
_TABLE_ROWS = 1000  # rows per printed table of a long listing


def _errors_answer(fs: Any, run: str | None) -> Any:
    """The errors listing when it is short (a list), else ``{"streamed": rows}``: a marker
    that the listing is read from the store, not from (or into) the cache."""
    n = fs.count_errors(run)
    return {"streamed": n} if n > ERRORS_CACHED else fs.errors(run)


def _print_json_rows(rows: Iterable[Any]) -> None:
    """Print what ``_print_json(list(rows))`` prints, one row at a time."""
    out, first = sys.stdout, True
    for r in rows:
        text = json.dumps(r, indent=2, default=str)
        # JSON escapes the newlines inside strings: every newline of `text` is a line break
        out.write(("[\n  " if first else ",\n  ") + text.replace("\n", "\n  "))
        first = False
    out.write("[]\n" if first else "\n]\n")


def cmd_errors(args: argparse.Namespace) -> int:
    rows = _catalog(args.store, f"errors:{args.run}", lambda fs: _errors_answer(fs, args.run))
    if isinstance(rows, dict):  # too long for the cache: streamed from the store
        from featurestore.api import FeatureStore

        rows = FeatureStore(args.store).iter_errors(args.run)
    if args.json:
        _print_json_rows(rows)
    else:
        cols = ["run_id", "stage", "error_type", "uri", "message"]
        it, title = iter(rows), f"errors in {args.store}"
        # a long listing is printed as consecutive tables (a table is laid out in memory)
        while True:
            part = [[r[c] for c in cols] for r in itertools.islice(it, _TABLE_ROWS)]
            if part or title:
                _table(title, cols, part)
            if len(part) < _TABLE_ROWS:
                break
            title = ""
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from featurestore.plugins import get_host

    host = get_host()
    records = [r.as_dict() for r in host.records]
    if args.json:
        conflicts = {k: reg.conflicts() for k, reg in host.registries.items() if reg.conflicts()}
        _print_json({"plugins": records, "conflicts": conflicts, "warnings": host.env_warnings})
    else:
        rows = []
        for r in records:
            regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registers"].items())
            rows.append((r["name"], r["distribution"], r["version"], r["status"], regs, " | ".join(r["errors"])))
        _table("featurestore plugins", ["plugin", "distribution", "version", "status", "registers", "errors"], rows)
        for w in host.env_warnings:
            _console().print(f"[yellow]warning:[/] {_esc(w)}", highlight=False, soft_wrap=True)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from featurestore.plugins import list_backbones

    items = list_backbones(args.pattern)
    if args.json:
        _print_json(items)
    elif args.markdown:
        sys.stdout.write(backbones_markdown(items))
    else:
        rows = [(b["name"], b.get("dim"), b.get("layout"), b.get("source"), b["plugin"], b.get("summary")) for b in items]
        _table("backbones", ["name", "dim", "token layout", "source", "plugin", "summary"], rows)
    return 0


def backbones_markdown(items: Sequence[dict[str, Any]]) -> str:
    """The Backbones table of docs/guide/backbones.md, from the live registry."""
    lines = ["| name | dim | token layout | source | plugin |", "|---|---|---|---|---|"]
    for b in items:
        cells = [f"`{b['name']}`", str(b.get("dim") or "model's"), b.get("layout") or "", b.get("source") or "", b["plugin"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _split_aggregators(text: str) -> list[str]:
    """``mean,max`` → two names; commas inside ``name:k=v,k2=v2`` stay with their name."""
    out: list[str] = []
    for part in text.split(","):
        if out and "=" in part and ":" not in part:
            out[-1] += "," + part  # another parameter of the previous aggregator
        elif part.strip():
            out.append(part.strip())
    return out


def cmd_aggregate(args: argparse.Namespace) -> int:
    from featurestore.api import FeatureStore

    fs = FeatureStore(args.store)
    results = [fs.aggregate(args.model, a, window=args.window, stride=args.stride) for a in _split_aggregators(args.aggregator)]
    if args.json:
        _print_json([r.as_dict() for r in results])
    else:
        for r in results:
            _console().print(f"{_esc(r.aggregator)} → table [cyan]{_esc(r.table)}[/]: {r.videos} videos, {r.clips} clips, {r.written} new")
    return 0


def cmd_clips(args: argparse.Namespace) -> int:
    items = _catalog(args.store, "clips", lambda fs: fs.clips())
    if args.json:
        _print_json(items)
    else:
        rows = [(c["table"], c["aggregator"], json.dumps(c["spec"]["params"]), c["model_table"], c["rows"], c["dim"]) for c in items]
        _table(f"clip tables in {args.store}", ["table", "aggregator", "params", "model table", "rows", "dim"], rows)
    return 0


def cmd_aggregators(args: argparse.Namespace) -> int:
    from featurestore.plugins import get_host

    reg = get_host().aggregators
    items = [{"name": e.name, "plugin": e.plugin, **e.metadata} for e in reg.entries() if e.name in reg.names()]
    if args.json:
        _print_json(items)
    else:
        rows = [(a["name"], json.dumps(a.get("params") or {}), "yes" if a.get("patches") else "no", a["plugin"], a.get("summary")) for a in items]
        _table("aggregators", ["name", "params (defaults)", "patches", "plugin", "summary"], rows)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from featurestore.api import FeatureStore

    rows = FeatureStore(args.store).classify(
        args.model, args.labels, templates=args.template, weights=args.weights, device=args.device, version=args.version,
        roots=args.root,
    )
    if args.json:
        _print_json_rows(rows)  # one row at a time: a row per stored image, with a score per label
        return 0
    c = _console()
    counts: dict[str, int] = {}
    n = 0
    for r in rows:
        n += 1
        counts[r["label"]] = counts.get(r["label"], 0) + 1
        c.print(f"{r['label']}\t{r['score']:.4f}\t{r['uri']}", markup=False, highlight=False)
    c.print(f"{n} images: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])), markup=False, highlight=False)
    return 0


# -- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featurestore", description="Versioned image features in LanceDB, keyed by model hash.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument(
        "-v", "--verbose", action="store_true",
        help="also show the libraries' warnings (LanceDB's log, Python UserWarnings), hidden by default",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("extract", help="extract CLS (and patch) features of images into a store")
    e.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (recursive), globs, or @list.txt")
    e.add_argument("--backbone", "-b", required=True, help="backbone name (see `featurestore backbones`)")
    e.add_argument("--store", "-s", required=True, help="LanceDB store directory (created if missing)")
    e.add_argument("--weights", help="load weights from here instead (hub id, directory or file)")
    e.add_argument("--dense", action="store_true", help="also store patch tokens (float16)")
    e.add_argument(
        "--layers",
        help="store these blocks' outputs, concatenated: e.g. -4,-3,-2,-1 or last4 (default: the backbone's output)",
    )
    e.add_argument("--sample", default="uniform:8", help="video frames: uniform:N, fps:R, keyframes or every:K (default uniform:8)")
    e.add_argument("--aggregate", action="append", metavar="NAME[,NAME…]", help="temporal aggregators for each video's frames, e.g. mean,meanmax")
    e.add_argument("--window", type=float, help="with --aggregate: one clip per window of this many seconds")
    e.add_argument("--stride", type=float, help="with --window: seconds between window starts (default: the window)")
    e.add_argument("--adapter", action="append", metavar="HASH|NAME", help="a fitted adapter of this model (repeatable): adapted rows are written too")
    tg = e.add_mutually_exclusive_group()
    tg.add_argument(
        "--tag", metavar="NAME",
        help="name the tag this run creates on the version it ends at (default run-<run id>); "
        "reading commands take --tag to pin a version",
    )
    tg.add_argument("--no-tag", action="store_true", help="leave that version untagged (so compaction can drop its files)")
    e.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    e.add_argument("--commit-every-rows", type=int, default=50_000, metavar="N", help="commit once N new rows wait (default 50000)")
    e.add_argument(
        "--commit-every-seconds", type=float, default=2.0, metavar="S",
        help="commit once the oldest new row has waited S seconds (default 2: a kill loses about that much work)",
    )
    e.add_argument(
        "--rehash", action="store_true",
        help="read and hash every input file (default: stored files whose path, size, mtime and inode are unchanged are not read)",
    )
    e.add_argument("--workers", type=int, default=2, help="decode/preprocess worker processes (default 2, 0 = in-process)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    e.add_argument("--max-error-rate", type=float, default=1.0, help="exit 1 when errors/inputs exceeds this (default 1.0)")
    e.add_argument("--max-pixels", type=int, default=None, help="decompression-bomb limit in pixels (default: Pillow's)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(func=cmd_extract)

    from featurestore.paths import add_root_option

    cl = sub.add_parser("classify", help="zero-shot labels for stored images (CLIP/SigLIP models)")
    cl.add_argument("--store", "-s", required=True)
    cl.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    cl.add_argument("--labels", "-l", required=True, help="comma-separated labels, or @file with one label per line")
    cl.add_argument("--version", "--tag", dest="version", help="classify the rows of this table version (number or tag; default the latest)")
    cl.add_argument(
        "--template",
        action="append",
        help="prompt template with {} for the label; repeat to average several (default: 'a photo of a {}.')",
    )
    cl.add_argument("--weights", help="where to load the model from, if not where it was loaded at extraction")
    cl.add_argument("--device", default="cpu", help="where to encode the text (default cpu)")
    add_root_option(cl)
    cl.add_argument("--json", action="store_true", help="one object per image with every label's score")
    cl.set_defaults(func=cmd_classify)

    ag = sub.add_parser("aggregate", help="aggregate the stored frames of videos into clip rows (nothing is re-extracted)")
    ag.add_argument("--store", "-s", required=True)
    ag.add_argument("--model", "-m", required=True, help="table name, model hash (prefix) or backbone name")
    ag.add_argument("--aggregator", "-a", required=True, help="NAME[,NAME…], a NAME may take params: trimmed-mean:proportion=0.2")
    ag.add_argument("--window", type=float, help="one clip per window of this many seconds (default: one per video)")
    ag.add_argument("--stride", type=float, help="seconds between window starts (default: the window)")
    ag.add_argument("--json", action="store_true")
    ag.set_defaults(func=cmd_aggregate)

    cp = sub.add_parser("clips", help="list the clip tables of a store")
    cp.add_argument("--store", "-s", required=True)
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_clips)

    al = sub.add_parser("aggregators", help="list registered temporal aggregators")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_aggregators)

    m = sub.add_parser("models", help="list the models (feature tables) in a store")
    m.add_argument("--store", "-s", required=True)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    er = sub.add_parser("errors", help="list inputs that failed, with stage, error type and message")
    er.add_argument("--store", "-s", required=True)
    er.add_argument("--run", help="only this run id (see the run summary)")
    er.add_argument("--json", action="store_true")
    er.set_defaults(func=cmd_errors)

    _add_optional_commands(sub)

    pl = sub.add_parser("plugins", help="list plugins, what they register, and load errors")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    bb = sub.add_parser("backbones", help="list registered backbones")
    bb.add_argument("pattern", nargs="?", help="shell pattern, e.g. 'dinov2_*'")
    bb.add_argument("--json", action="store_true")
    bb.add_argument("--markdown", action="store_true", help="print the Markdown table the documentation shows (docs/guide/backbones.md)")
    bb.set_defaults(func=cmd_backbones)
    return p


# Commands that live in their own modules: each exposes ``add_commands(subparsers)``.
_COMMAND_MODULES = ("featurestore.cli_readers", "featurestore.cli_search", "featurestore.cli_analysis", "featurestore.cli_adapt", "featurestore.cli_store")


def _add_optional_commands(sub: Any) -> None:
    import importlib

    for mod in _COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)


def _version() -> str:
    from featurestore import __version__

    return __version__


# Options whose value may start with "-": ``--layers -4,-3,-2,-1`` is the documented form, but
# argparse takes "-4,-3,-2,-1" for an option (it only knows plain negative numbers).
_NEGATIVE_VALUE_OPTIONS = ("--layers",)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--layers -4,-3`` → ``--layers=-4,-3`` where the value parses as the option's value.

    A value that does not parse (``--layers --dense``: a forgotten value) is left alone, so
    argparse still reports the missing argument. Nothing after ``--`` is touched.
    """
    from featurestore.layers import parse_layers  # light: no torch, no lancedb

    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if a in _NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            try:
                parse_layers(argv[i + 1])
            except FeatureStoreError:
                pass
            else:
                out.append(f"{a}={argv[i + 1]}")
                i += 2
                continue
        out.append(a)
        i += 1
    return out


def _wants_verbose(argv: Sequence[str]) -> bool:
    """``-v`` / ``--verbose`` before the command (the global options end at the first word)."""
    for a in argv:
        if a in ("-v", "--verbose"):
            return True
        if not a.startswith("-"):
            return False
    return False


# Library noise hidden unless --verbose: LanceDB's Rust log (env_logger, read from these variables
# when the extension is imported: LANCEDB_LOG by lancedb, LANCE_LOG by pylance; default level
# warn) and Python UserWarnings of lancedb, torch, transformers …; our own errors go to stderr
# directly and are never hidden.
_QUIET_ENV = {"LANCEDB_LOG": "error", "LANCE_LOG": "error"}


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Quiet defaults for one CLI call; the environment is restored afterwards, so ``main``
    called in-process (tests, notebooks) leaves no trace. A variable the user set wins."""
    if verbose:
        yield
        return
    env = dict(_QUIET_ENV)
    user_warnings = "PYTHONWARNINGS" in os.environ or bool(sys.warnoptions)
    if not user_warnings:
        env["PYTHONWARNINGS"] = "ignore::UserWarning"  # worker processes (forkserver, spawn) read it
    added = [k for k in env if k not in os.environ]
    for k in added:
        os.environ[k] = env[k]
    try:
        with warnings.catch_warnings():
            if not user_warnings:
                warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _warn_plugin_env() -> None:
    """A typo in FEATURESTORE_PLUGINS / FEATURESTORE_DISABLE_PLUGINS, said once per command:
    otherwise the plugin silently stays off (or on)."""
    from featurestore.plugins import ENV_ALLOW, ENV_BLOCK, env_warnings

    if os.environ.get(ENV_ALLOW) or os.environ.get(ENV_BLOCK):
        for w in env_warnings():
            sys.stderr.write(f"featurestore: warning: {w}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _quiet_libraries(_wants_verbose(argv)):
        args = build_parser().parse_args(_join_negative_values(argv))
        if args.func is not cmd_plugins:  # which shows them in its output
            _warn_plugin_env()
        try:
            return int(args.func(args))
        except FeatureStoreError as exc:
            if getattr(args, "json", False):
                _print_json({"error": type(exc).__name__, "message": str(exc)})
            sys.stderr.write(f"featurestore: error: {exc}\n")
            return 2
        except KeyboardInterrupt:
            sys.stderr.write("featurestore: interrupted; committed batches are kept, re-run to finish\n")
            return 130


def console_main() -> None:
    """The ``featurestore`` console script: :func:`main`, then the process ends at once.

    With torch, a model library and LanceDB loaded, the interpreter's teardown (freeing every
    module and object) takes 1-3 s after the command is done. Nothing in it matters to a
    finished command: its writes are committed, worker processes are joined, and stdout,
    stderr and logging are flushed here. So the process exits without it (``os._exit``).
    An exception escaping :func:`main` (a bug) still takes the normal way out, traceback and all.
    """
    import logging
    import os

    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (| head), a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
