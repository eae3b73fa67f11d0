"""The stat cache: re-runs do not read files whose stat is unchanged and whose content is stored.

"Not read" is shown, not assumed: a file rewritten in place with other bytes of the same
size, its mtime put back, looks unchanged to ``stat``. A run that skips it without adding a
row did not read it (reading would have found a new content id); ``--rehash`` reads it.
"""

import os
import time
from pathlib import Path

import lancedb
import pytest

from featurestore import FeatureStore
from featurestore.store import Store
from featurestore.statcache import RACY_SECONDS, STAT_TABLE, StatCache, record_for, stat_key, state_path
from featurestore.testing import write_images, write_video

HOUR_NS = 3600 * 10**9


def _age(paths, ns: int = HOUR_NS) -> None:
    """Date the files an hour back: older than the racy window, as files on disk usually are."""
    t = time.time_ns() - ns
    for p in paths:
        os.utime(p, ns=(t, t))


def _rewrite_keeping_stat(path: Path) -> None:
    """Other bytes, same size, same inode, same mtime: invisible to stat."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the JPEG's last scan bytes: still a file of the same size
    with open(path, "r+b") as f:  # in place: the inode stays
        f.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino


def _cache_rows(store: Path) -> list[dict]:
    return lancedb.connect(state_path(str(store))).open_table(STAT_TABLE).to_arrow().to_pylist()


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: a DataLoader worker process
def test_rerun_skips_stored_files_without_reading_them(fs_tiny_dinov2, tmp_path, workers):
    paths = write_images(tmp_path / "in", 5, size=(32, 32))
    _age(paths)
    fs = FeatureStore(tmp_path / "s")
    first = fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=workers, batch_size=2)
    assert first.written == 5
    rows = _cache_rows(tmp_path / "s")
    assert sorted(r["path"] for r in rows) == sorted(str(p.resolve()) for p in paths)

    _rewrite_keeping_stat(paths[0])
    again = fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=workers, batch_size=2)
    assert (again.written, again.skipped_existing, again.errors) == (0, 5, 0)  # paths[0] was not read

    rehashed = fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=workers, batch_size=2, rehash=True)
    assert (rehashed.written, rehashed.skipped_existing) == (1, 4)  # read: its new bytes are a new row
    assert len(_cache_rows(tmp_path / "s")) == 5  # same stat key: the entry is not added twice


def test_a_changed_file_is_hashed_again(fs_tiny_dinov2, tmp_path):
    paths = write_images(tmp_path / "in", 3, size=(32, 32))
    _age(paths)
    fs = FeatureStore(tmp_path / "s")
    fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    write_images(tmp_path / "other", 1, size=(32, 32), seed=7)[0].replace(paths[1])  # a new inode
    data = bytearray(paths[2].read_bytes())
    data[-3] ^= 0xFF
    paths[2].write_bytes(bytes(data))  # in place, same size, new mtime
    _age(paths[1:])  # both old again, with mtimes that differ from the cached ones
    assert os.stat(paths[2]).st_mtime_ns != next(r["mtime_ns"] for r in _cache_rows(tmp_path / "s") if r["path"] == str(paths[2].resolve()))
    again = fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert (again.written, again.skipped_existing) == (2, 1)


def test_files_written_just_before_the_run_are_not_cached(fs_tiny_dinov2, tmp_path):
    paths = write_images(tmp_path / "in", 3, size=(32, 32))
    _age(paths[:1])
    FeatureStore(tmp_path / "s").extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert [r["path"] for r in _cache_rows(tmp_path / "s")] == [str(paths[0].resolve())]
    now = time.time_ns()
    st = os.stat(paths[1])
    assert now - st.st_mtime_ns < RACY_SECONDS * 1e9 or record_for(str(paths[1]), st, "x", now) is not None


def test_record_for_refuses_a_file_that_changed_while_read(tmp_path):
    p = write_images(tmp_path, 1, size=(8, 8))[0]
    _age([p])
    before = os.stat(p)
    assert record_for(str(p), before, "c" * 64) is not None
    _age([p], ns=2 * HOUR_NS)  # its stat is not what it was when read
    assert record_for(str(p), before, "c" * 64) is None


@pytest.mark.slow  # a DataLoader worker process
def test_another_model_over_cached_files_decodes_them(fs_tiny_dinov2, fs_tiny_model_factory, tmp_path):
    paths = write_images(tmp_path / "in", 4, size=(32, 32))
    _age(paths)
    fs = FeatureStore(tmp_path / "s")
    fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    other = fs_tiny_model_factory("dinov2", seed=1)
    s = fs.extract([tmp_path / "in"], backbone=f"hf:{other}", workers=1, batch_size=3)
    assert (s.written, s.skipped_existing) == (4, 0)  # known to the cache, not stored in this table


def test_a_moved_tree_is_hashed_once_more_and_stored_content_is_skipped(fs_tiny_dinov2, tmp_path):
    paths = write_images(tmp_path / "in", 3, size=(32, 32))
    _age(paths)
    fs = FeatureStore(tmp_path / "s")
    fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    (tmp_path / "in").rename(tmp_path / "moved")
    s = fs.extract([tmp_path / "moved"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert (s.written, s.skipped_existing) == (0, 3)
    assert len(_cache_rows(tmp_path / "s")) == 6  # the new paths are cached too


def test_video_hash_is_cached(fs_tiny_dinov2, tmp_path):
    v = tmp_path / "clip.mp4"
    write_video(v, n_frames=6)
    _age([v])
    fs = FeatureStore(tmp_path / "s")
    first = fs.extract([v], backbone=f"hf:{fs_tiny_dinov2}", workers=0, sample="uniform:3")
    rows = _cache_rows(tmp_path / "s")
    assert [r["path"] for r in rows] == [str(v.resolve())] and first.frames_written == 3
    assert StatCache(str(tmp_path / "s")).lookup([str(v.resolve())])[0] == {str(v.resolve()): rows[0]["content_id"]}
    again = fs.extract([v], backbone=f"hf:{fs_tiny_dinov2}", workers=0, sample="uniform:3")
    assert (again.written, again.skipped_existing) == (0, 3)


def test_the_cache_is_not_a_table_of_the_store(fs_tiny_dinov2, tmp_path):
    paths = write_images(tmp_path / "in", 2, size=(32, 32))
    _age(paths)
    fs = FeatureStore(tmp_path / "s")
    fs.extract([tmp_path / "in"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert STAT_TABLE not in Store(tmp_path / "s").table_names()
    assert len(_cache_rows(tmp_path / "s")) == 2


def test_lookup_creates_nothing_and_finds_nothing_without_a_cache(tmp_path):
    p = write_images(tmp_path / "img", 1, size=(8, 8))[0]
    (tmp_path / "s").mkdir()
    known, stats = StatCache(str(tmp_path / "s")).lookup([str(p), str(tmp_path / "missing.jpg")])
    assert known == {} and list(stats) == [str(p)]
    assert not os.path.exists(state_path(str(tmp_path / "s")))
    assert stat_key(str(p), stats[str(p)]) != stat_key(str(p) + "x", stats[str(p)])
