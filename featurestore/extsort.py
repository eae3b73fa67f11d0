"""Sorting a stream larger than memory: sorted runs spilled to a temporary directory, merged.

Reads over a whole table (the manifest's content digest, the ``errors`` listing) need their
rows in an order the table does not store them in. :func:`external_sorted` yields the items
of any iterable in ``sorted(items, key=key)`` order — the same order, stable, ties kept in
input order — while holding at most ``run`` items (plus one block per spilled run) in memory.

Nothing touches the disk while the input fits in one run: small tables sort in memory, as
before. Larger inputs are cut into runs of ``run`` items, each sorted and written (pickled in
blocks, to a private directory under ``tempfile.gettempdir()``, removed afterwards), then
merged with :func:`heapq.merge` — which is stable across its inputs, so equal keys come out
in input order. More than ``fan_in`` runs are first merged into larger runs, a group at a
time, so open files stay bounded however long the input.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

RUN = 65_536  # items sorted in memory at once
FAN_IN = 64  # runs merged at once (open files)
_BLOCK = 1024  # items per pickled block of a run file


def _write_run(path: Path, items: Iterable[Any]) -> Path:
    with open(path, "wb") as f:
        it = iter(items)
        while block := list(itertools.islice(it, _BLOCK)):
            pickle.dump(block, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _read_run(path: Path) -> Iterator[Any]:
    # our own files in our own private directory: unpickling them is safe
    with open(path, "rb") as f:
        while True:
            try:
                block = pickle.load(f)
            except EOFError:
                return
            yield from block


def external_sorted(
    items: Iterable[T], key: Callable[[T], Any] | None = None, *, run: int | None = None, fan_in: int | None = None
) -> Iterator[T]:
    """Yield ``items`` in ``sorted(items, key=key)`` order with bounded memory (see the module doc).

    Args:
        items: any iterable (consumed once).
        key: as for :func:`sorted`.
        run: items held and sorted in memory at once (default :data:`RUN`); an input of at
            most ``run`` items never touches the disk.
        fan_in: runs merged at once, at least 2 (default :data:`FAN_IN`).
    """
    run = RUN if run is None else run
    fan_in = FAN_IN if fan_in is None else fan_in
    if run < 1 or fan_in < 2:
        raise ValueError(f"run must be >= 1 and fan_in >= 2, got run={run}, fan_in={fan_in}")
    it = iter(items)
    first = sorted(itertools.islice(it, run), key=key)
    if len(first) < run:  # it all fitted (nothing more to read)
        yield from first
        return
    nxt = list(itertools.islice(it, run))
    if not nxt:
        yield from first
        return
    with tempfile.TemporaryDirectory(prefix="featurestore-sort-") as tmp:
        made = itertools.count()

        def spill(sorted_items: Iterable[Any]) -> Path:
            return _write_run(Path(tmp) / f"run{next(made)}", sorted_items)

        runs = [spill(first)]
        del first
        while nxt:
            runs.append(spill(sorted(nxt, key=key)))
            nxt = list(itertools.islice(it, run))
        while len(runs) > fan_in:
            # merge the oldest runs first: input order among equal keys is kept run by run
            group, runs = runs[:fan_in], runs[fan_in:]
            merged = spill(heapq.merge(*(_read_run(p) for p in group), key=key))
            for p in group:
                p.unlink()
            runs.insert(0, merged)
        yield from heapq.merge(*(_read_run(p) for p in runs), key=key)


__all__ = ["FAN_IN", "RUN", "external_sorted"]
