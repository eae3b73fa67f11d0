"""Read → hash → decode → preprocess, run in DataLoader worker processes.

Each item comes back as ok (pixels ready), skipped (its content id is already in the
table, so it is neither decoded nor computed), or an error record. Batches are
collated in the workers so the main process only runs the forward pass and writes.
"""

from __future__ import annotations

import multiprocessing
import pickle
import pickletools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from featurestore.backbone import Preprocessor
from featurestore.config import ErrorRecord
from featurestore.errors import MediaError
from featurestore.hashing import content_id
from featurestore.media import decode_image


@dataclass
class Meta:
    """Metadata of one image that reached the model."""

    id: str
    uri: str
    size: tuple[int, int]  # (width, height) after EXIF orientation
    crop_box: tuple[float, float, float, float]


@dataclass
class Group:
    """Images of one batch that share an input shape, stacked."""

    pixel_values: torch.Tensor  # (b, C, H, W)
    metas: list[Meta]

    def pin_memory(self) -> "Group":
        return Group(self.pixel_values.pin_memory(), self.metas)


@dataclass
class Batch:
    """What the workers hand the main process for one DataLoader batch."""

    groups: list[Group] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, uri) already stored
    errors: list[ErrorRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(g.metas) for g in self.groups) + len(self.skipped) + len(self.errors)

    def pin_memory(self) -> "Batch":
        return Batch([g.pin_memory() for g in self.groups], self.skipped, self.errors)


def _error(uri: str, cid: str | None, stage: str, exc: BaseException) -> ErrorRecord:
    msg = exc.message if isinstance(exc, MediaError) else f"{type(exc).__name__}: {exc}"
    return ErrorRecord(id=cid, uri=uri, stage=stage, error_type=type(exc).__name__, message=msg)  # type: ignore[arg-type]


class SourceDataset(Dataset):
    """Map-style dataset over file paths; picklable so it runs in worker processes."""

    def __init__(self, uris: list[str], preprocessor: Preprocessor, skip_ids: frozenset[str], max_pixels: int | None):
        self.uris = uris
        self.preprocessor = preprocessor
        self.skip_ids = skip_ids
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int) -> Any:
        uri = self.uris[i]
        try:
            data = Path(uri).read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return ErrorRecord(
                uri=uri, stage="read", error_type=type(exc).__name__, message=f"cannot read {uri}: {reason}. Fix: check the path and permissions."
            )
        cid = content_id(data)
        if cid in self.skip_ids:
            return ("skip", cid, uri)
        try:
            img = decode_image(data, uri, max_pixels=self.max_pixels)
        except Exception as exc:  # any decoder failure is this item's, not the run's
            return _error(uri, cid, "decode", exc)
        try:
            pre = self.preprocessor(img)
        except Exception as exc:
            return _error(uri, cid, "preprocess", exc)
        return Meta(cid, uri, img.size, tuple(float(v) for v in pre.crop_box)), pre.pixel_values  # type: ignore[return-value]


def collate(items: list[Any]) -> Batch:
    """Sort items into ok groups (stacked by shape), skips and errors."""
    batch = Batch()
    by_shape: dict[tuple[int, ...], tuple[list[torch.Tensor], list[Meta]]] = {}
    for it in items:
        if isinstance(it, ErrorRecord):
            batch.errors.append(it)
        elif isinstance(it, tuple) and len(it) == 3 and it[0] == "skip":
            batch.skipped.append((it[1], it[2]))
        else:
            meta, px = it
            tensors, metas = by_shape.setdefault(tuple(px.shape), ([], []))
            tensors.append(px)
            metas.append(meta)
    for tensors, metas in by_shape.values():
        batch.groups.append(Group(torch.stack(tensors), metas))  # (b, C, H, W)
    return batch


def _worker_init(_: int) -> None:
    # Workers only decode and preprocess; one thread each keeps them off the cores
    # the forward pass uses.
    torch.set_num_threads(1)


BASE_PRELOAD = ("torch", "featurestore.loader")


def pickled_modules(obj: Any) -> list[str]:
    """Modules a worker must import to unpickle ``obj`` (e.g. a plugin's preprocessor).

    Read off the pickle's GLOBAL opcodes (protocol 2 spells them ``module name``).
    """
    try:
        data = pickle.dumps(obj, protocol=2, fix_imports=False)
    except Exception:  # not picklable: the DataLoader will say so, with its own message
        return []
    mods = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL" and isinstance(arg, str):
            mod = arg.split(" ", 1)[0]
            if mod not in mods and mod not in ("builtins", "copyreg", "__main__"):
                mods.append(mod)
    return mods


def _worker_context(preload: Sequence[str] = ()) -> Any:
    """Workers start from a clean forkserver, never by forking this process.

    By now this process runs LanceDB's async runtime (and maybe CUDA); forking it can
    deadlock a child that inherits a lock held by one of those threads. The forkserver
    imports torch, this module and ``preload`` (the preprocessor's modules) once, so each
    worker starts in well under a second instead of importing a model library itself.
    Preloading applies to the first forkserver of a process; later runs reuse it.
    """
    if sys.platform == "win32" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*BASE_PRELOAD, *(m for m in preload if m not in BASE_PRELOAD)])
    return ctx


def start_worker_server(preprocessor: Any) -> None:
    """Start the forkserver now, importing what the workers will need, while this process
    goes on hashing the model and opening the store (it does not wait for the imports)."""
    ctx = _worker_context(pickled_modules(preprocessor))
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def make_loader(dataset: SourceDataset, *, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        multiprocessing_context=_worker_context() if workers else None,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
