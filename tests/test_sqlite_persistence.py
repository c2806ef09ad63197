"""The SQLite store survives restarts: exact and semantic entries, and the vector index."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from reprise.store.base import CacheEntry, unit
from reprise.store.sqlite import SQLiteStore


def _entry(i: int, v: np.ndarray, ns: str = "ns") -> CacheEntry:
    return CacheEntry(key=f"k{i}", namespace=ns, fingerprint="fp", question=f"q{i}",
                      response=b"{}", vector=v, created_at=time.time())


async def test_restart_keeps_entries_and_hnsw_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vecs = [unit(v) for v in rng.normal(size=(2500, 16))]
    store = SQLiteStore(tmp_path / "c.sqlite3", 16, hnsw_from=1000)
    for i, v in enumerate(vecs):
        await store.put(_entry(i, v))
    assert (await store.search("ns", "fp", vecs[7], 1))[0].entry.key == "k7"
    await store.close()
    saved = list((tmp_path / "c.index").glob("*.usearch"))
    assert len(saved) == 1, "the HNSW partition is saved on close"

    reopened = SQLiteStore(tmp_path / "c.sqlite3", 16, hnsw_from=1000)
    assert (await reopened.get_exact("ns", "k42")) is not None
    assert (await reopened.search("ns", "fp", vecs[42], 1))[0].entry.key == "k42"
    # a write after reopening keeps the loaded index in step
    await reopened.delete("ns", "k42")
    hits = await reopened.search("ns", "fp", vecs[42], 1)
    assert hits[0].entry.key != "k42"
    await reopened.close()


async def test_stale_saved_index_is_rebuilt(tmp_path: Path) -> None:
    """After a crash (rows changed, index not re-saved) the index is rebuilt from rows."""
    rng = np.random.default_rng(2)
    vecs = [unit(v) for v in rng.normal(size=(1200, 16))]
    store = SQLiteStore(tmp_path / "c.sqlite3", 16, hnsw_from=1000)
    for i, v in enumerate(vecs[:1100]):
        await store.put(_entry(i, v))
    await store.search("ns", "fp", vecs[0], 1)
    await store.close()
    # another process (or a crashed run) adds rows without saving the index
    other = SQLiteStore(tmp_path / "c.sqlite3", 16, hnsw_from=1000)
    for i, v in enumerate(vecs[1100:], start=1100):
        await other.put(_entry(i, v))
    # simulate a crash: `other` is abandoned without close(), so nothing is saved

    again = SQLiteStore(tmp_path / "c.sqlite3", 16, hnsw_from=1000)
    assert (await again.search("ns", "fp", vecs[1150], 1))[0].entry.key == "k1150"
    await again.close()


async def test_dimension_mismatch_is_clear(tmp_path: Path) -> None:
    import pytest

    from reprise.store.base import DimensionMismatch

    store = SQLiteStore(tmp_path / "c.sqlite3", 16)
    await store.put(_entry(1, unit(np.ones(16))))
    await store.close()
    wrong = SQLiteStore(tmp_path / "c.sqlite3", 32)
    with pytest.raises(DimensionMismatch, match="16-dim"):
        await wrong.get_exact("ns", "k1")
    await wrong.close()
