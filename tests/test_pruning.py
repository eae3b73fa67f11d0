"""Version pruning and index-only maintenance on the pylance fast path, and the old path
without pylance.

The fast-path tests need the ``lance`` package (pylance) and are skipped without it; the last
test runs in a process where ``lance`` cannot be imported (``sys.modules["lance"] = None``
would not do: LanceDB reads ``"lance" in sys.modules`` as "installed").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from featurestore.commit import Committer, MaintainPolicy, stored_keys
from featurestore.config import ModelCard
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.writer import TableWriter

DIM = 4


def _card(h: str = "cd" * 32) -> ModelCard:
    return ModelCard(
        model_hash=h, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", h), plugin="test",
        plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=False, preprocessing={},
        output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _batch(table, lo: int, hi: int) -> pa.Table:
    ids = [f"{i:064x}" for i in range(lo, hi)]
    n = len(ids)
    cls = np.arange(lo * DIM, hi * DIM, dtype=np.float32).reshape(n, DIM)  # every row its own values
    return feature_batch(
        table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * n, crop_boxes=np.zeros((n, 4)), cls=cls,
        patches=None, grids=None, run_id="r",
    )


def _rows(table) -> pa.Table:
    return table.to_arrow().select(["id", "cls"]).sort_by("id")


def _disk(table) -> int:
    return sum(f.stat().st_size for f in Path(str(table.uri)).rglob("*") if f.is_file())


def _versions(table) -> list[int]:
    return [int(v["version"]) for v in table.list_versions()]


def _lance():
    pytest.importorskip("lance")
    from featurestore import maintenance

    if maintenance.pylance() is None:
        pytest.skip("this pylance lacks the options the fast path uses")
    return maintenance


def _with_tags_and_compactions(tmp_path, grace: timedelta | None):
    """A writer's commits with two tagged versions, compactions and index updates in between."""
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    policy = MaintainPolicy(check_every=2, max_small_fragments=3, max_unindexed_rows=10, background=False, prune_grace=grace)
    w = TableWriter(store.db.open_table(table.name), commit_rows=10, commit_seconds=3600, background=False, policy=policy)
    tagged = {}
    for k in range(24):
        w.put(_batch(table, 5 * k, 5 * k + 5))
        if k in (5, 15):
            w.flush()
            table.checkout_latest()
            table.tags.create(f"run-{k}", int(table.version))  # what extract does after its writers close
            tagged[f"run-{k}"] = _rows(table)
    return store, table, w, tagged


def test_closing_a_writer_prunes_replaced_versions_and_keeps_tagged_ones(tmp_path):
    maintenance = _lance()
    store, table, w, tagged = _with_tags_and_compactions(tmp_path, grace=timedelta(0))
    w.flush()
    assert w.committer.compactions >= 2  # fragments of the tagged versions were rewritten
    table.checkout_latest()
    before_versions, before_bytes, latest = _versions(table), _disk(table), _rows(table)
    w.close()
    table.checkout_latest()
    tags = {k: int(v["version"]) for k, v in table.tags.list().items()}
    # every untagged version but the latest is gone; the tagged ones read back exactly
    assert sorted(_versions(table)) == sorted({*tags.values(), int(table.version)}) and len(before_versions) > 10
    assert w.committer.pruned_versions == len(before_versions) - len(_versions(table))
    assert _disk(table) < before_bytes
    for name, rows in tagged.items():
        old = store.db.open_table(table.name)
        old.checkout(name)
        assert _rows(old).equals(rows)
    assert _rows(table).equals(latest) and latest.num_rows == 120
    assert maintenance.pylance() is not None


def test_the_grace_period_keeps_versions_a_reader_may_still_use(tmp_path):
    _lance()
    store, table, w, _ = _with_tags_and_compactions(tmp_path, grace=timedelta(hours=1))
    w.flush()
    table.checkout_latest()
    reader = store.db.open_table(table.name)
    reader.checkout(int(table.version) - 3)  # an untagged version, replaced a moment ago
    expected = _rows(reader)
    before = _versions(table)
    w.close()
    assert _versions(table) == before and w.committer.pruned_versions == 0
    assert _rows(reader).equals(expected)


def test_grace_is_counted_from_when_a_version_was_replaced(tmp_path):
    maintenance = _lance()
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    c = Committer(store.db.open_table(table.name), policy=MaintainPolicy(enabled=False))
    c.commit(_batch(table, 0, 5))
    first = int(c.table.version)
    time.sleep(3)  # the first version is now older than the grace below ...
    c.commit(_batch(table, 5, 10))  # ... but was replaced just now: it stays
    uri = maintenance.dataset_uri(table)
    maintenance.prune_superseded(maintenance.open_dataset(uri), timedelta(seconds=2.5))  # versions before `first` go
    assert first in _versions(table)
    time.sleep(3)
    assert maintenance.prune_superseded(maintenance.open_dataset(uri), timedelta(seconds=2.5)).versions == 1
    table.checkout_latest()
    assert _versions(table) == [first + 1] and table.count_rows() == 10


def test_cleanup_skips_tagged_versions_instead_of_stopping_at_them(tmp_path):
    _lance()
    from featurestore.maintenance import cleanup

    store, table, w, tagged = _with_tags_and_compactions(tmp_path, grace=None)
    w.close()
    table.checkout_latest()
    assert len(_versions(table)) > 10  # no grace: nothing pruned by the writer
    with pytest.warns(UserWarning, match="removes every version except the latest"):
        rows = cleanup(store, older_than=timedelta(0))
    (res,) = [r for r in rows if r["table"] == table.name]
    tags = {int(v["version"]) for v in table.tags.list().values()}
    # the versions between and after the tags went too (without pylance they stay)
    assert sorted(_versions(table)) == sorted({*tags, int(table.version)})
    assert "tagged run-5" in res["note"] and "tagged run-15" in res["note"]
    for name, rows in tagged.items():
        old = store.db.open_table(table.name)
        old.checkout(name)
        assert _rows(old).equals(rows)


def test_index_updates_add_delta_segments_and_lookups_stay_indexed(tmp_path):
    maintenance = _lance()
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    c = Committer(store.db.open_table(table.name), policy=MaintainPolicy(enabled=False))
    c.commit(_batch(table, 0, 200))
    uri = maintenance.dataset_uri(table)
    maintenance.update_indices(maintenance.open_dataset(uri))  # the first 200 ids: one segment

    def segments() -> list[tuple[str, set[int]]]:
        (idx,) = [d for d in maintenance.open_dataset(uri).describe_indices() if d.name == "id_idx"]
        return [(s.uuid, set(s.fragment_ids)) for s in idx.segments]

    (base,) = segments()
    for k in range(3):
        c.commit(_batch(table, 200 + 10 * k, 210 + 10 * k))
        # segments of 100 rows or more are "large" here: the 200-id segment is left as it is
        assert maintenance.update_indices(maintenance.open_dataset(uri), merge_rows=100) == ["id_idx", "video_id_idx"]
    segs = segments()
    # the base segment untouched; the three updates merged into one small delta segment
    assert segs[0] == base and len(segs) == 2
    table.checkout_latest()
    assert table.index_stats("id_idx").num_unindexed_rows == 0
    query = table.search().where(f"id IN ('{3:064x}', '{225:064x}')").select(["id"])
    assert "ScalarIndexQuery" in query.explain_plan(verbose=True)
    assert stored_keys(table, [f"{i:064x}" for i in (3, 225, 999)]) == {f"{3:064x}", f"{225:064x}"}
    # compaction of the small fragments leaves those of the large segment alone
    metrics, kept = maintenance.compact_small(maintenance.open_dataset(uri), keep_rows=150, merge_rows=100)
    assert metrics is not None and metrics.fragments_removed == 3 and kept == 1
    assert sorted(stored_keys(table, [f"{i:064x}" for i in range(0, 240, 7)])) == [f"{i:064x}" for i in range(0, 230, 7)]
    # `featurestore compact` merges every segment into one
    maintenance.merge_indices(maintenance.open_dataset(uri))
    assert len(segments()) == 1


def test_merge_count_leaves_large_segments_until_as_many_keys_gathered():
    from featurestore.maintenance import merge_count

    assert merge_count([10_000_000], 250_000, merge_rows=1 << 20) == 0  # a new delta
    assert merge_count([10_000_000, 250_000], 250_000, merge_rows=1 << 20) == 1  # into the small delta
    assert merge_count([10_000_000, 2_000_000, 900_000], 250_000, merge_rows=1 << 20) == 1
    assert merge_count([10_000_000, 2_000_000, 1_900_000], 250_000, merge_rows=1 << 20) == 0
    # the small newest segment takes the new keys, and then each older one no larger than the sum
    assert merge_count([10_000_000, 2_000_000, 1_100_000, 1_000_000], 250_000, merge_rows=1 << 20) == 3
    assert merge_count([5_000_000, 3_000_000, 2_000_000], 100_000, merge_rows=1 << 20) == 0
    assert merge_count([0], 10) == 1  # the segment of an index made on an empty table


_OLD_PATH = r"""
import json, sys


class NoPylance:  # pylance cannot be imported in this process (as when it is not installed)
    def find_spec(self, name, path=None, target=None):
        if name == "lance" or name.startswith("lance."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoPylance())
from datetime import datetime, timedelta, timezone
from featurestore import maintenance
from featurestore.commit import MaintainPolicy
from featurestore.store import Store
from featurestore.writer import TableWriter
import test_pruning as t

store = Store(sys.argv[1])
table = store.register_model(t._card())
policy = MaintainPolicy(check_every=2, max_small_fragments=3, max_unindexed_rows=10, background=False)
w = TableWriter(store.db.open_table(table.name), commit_rows=10, commit_seconds=3600, background=False, policy=policy)
for k in range(12):
    w.put(t._batch(table, 5 * k, 5 * k + 5))
    if k == 3:
        w.flush(); table.checkout_latest(); table.tags.create("early", int(table.version))
w.close()
table.checkout_latest()
versions = len(table.list_versions())
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    (res,) = [r for r in maintenance.cleanup(store, older_than=timedelta(0)) if r["table"] == table.name]
old = store.db.open_table(table.name); old.checkout("early")
print(json.dumps({"pylance": maintenance.pylance() is not None, "optimizations": w.committer.optimizations,
                  "pruned": w.committer.pruned_versions, "versions": versions, "rows": table.count_rows(),
                  "after_cleanup": res["versions"], "note": res["note"], "early_rows": old.count_rows(), "error": repr(w.committer.maintenance_error)}))
"""


def test_without_pylance_the_old_path_still_works(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_OLD_PATH), str(tmp_path / "s")], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # LanceDB's optimize compacted and indexed; no version was pruned by the writer
    assert got["pylance"] is False and got["optimizations"] >= 1 and got["pruned"] == 0 and got["error"] == "None"
    assert got["versions"] > 12 and got["rows"] == 60 and got["early_rows"] == 20
    # cleanup stops at the tagged version: it and every version after it stay (with pylance:
    # only the tagged one and the latest)
    assert got["after_cleanup"] > 2 and "kept versions from" in got["note"] and "tagged early" in got["note"], got
