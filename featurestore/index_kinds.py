"""ANN index kinds of ``featurestore index`` and their defaults (see :mod:`featurestore.search`).

Plain constants, importing nothing: the CLI builds its parser from them on every command.
"""

from __future__ import annotations

# Index kinds: our name -> (lancedb.index config class, uses product quantisation).
INDEX_KINDS: dict[str, tuple[str, bool]] = {
    "ivf_pq": ("IvfPq", True),
    "ivf_sq": ("IvfSq", False),
    "ivf_flat": ("IvfFlat", False),
    "ivf_rq": ("IvfRq", False),
    "ivf_hnsw_sq": ("HnswSq", False),
    "ivf_hnsw_pq": ("HnswPq", True),
}
# 8-bit scalar quantisation: at 1M x 384 it built 2.7x faster than ivf_pq (D/8 sub-vectors) and
# reached recall 1.0 at 5 ms p50 where ivf_pq needed refine 40 for 0.98 at 8.5 ms (docs/benchmarks.md).
# Its index is larger (D bytes per row against D/8); pick ivf_pq when that matters.
DEFAULT_KIND = "ivf_sq"
# LanceDB trains k-means on 256 vectors per partition and each PQ codebook on 256 vectors;
# with fewer rows 0.40 silently trains fewer partitions, or leaves a PQ index empty.
ROWS_PER_PARTITION = 256
# HNSW kinds build one graph per partition: LanceDB's own default is ~1M rows per partition.
HNSW_ROWS_PER_PARTITION = 1_048_576
DEFAULT_NPROBES = 20
# Re-ranking candidates with the stored float32 vectors makes scores exact and lifts recall
# of quantised indexes to >= 0.95 (docs/benchmarks.md, "ANN search").
DEFAULT_REFINE = {"ivf_pq": 40, "ivf_hnsw_pq": 40, "ivf_rq": 20, "ivf_sq": 5, "ivf_hnsw_sq": 5, "ivf_flat": None}

__all__ = ["DEFAULT_KIND", "DEFAULT_NPROBES", "DEFAULT_REFINE", "HNSW_ROWS_PER_PARTITION", "INDEX_KINDS", "ROWS_PER_PARTITION"]
