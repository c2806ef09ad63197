"""The partition vector index: exact below ``hnsw_from``, reduced graph + re-scoring above.

The graph mode must agree with an exact scan (the semantic cache serves what it finds, so a
missed neighbour is a missed hit), stay in step with adds/removes, and survive a save/load.
Recall is checked on real USE embeddings of QQP tuning-split questions and on vectors with
their spectrum (the case the latency benchmark measures).
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reprise.config import Settings
from reprise.store.vector_index import CANDIDATES, REDUCED_DIM, PartitionIndex, VectorIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _exact_top(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ matrix.T
    return np.argsort(-sims, axis=1)[:, :k]


@pytest.fixture(scope="module")
def qqp_embeddings(data_dir: Path, use_embedder: object) -> tuple[np.ndarray, np.ndarray]:
    """(stored, asked): USE vectors of 3,000 first questions of QQP tuning-split pairs and of
    their second questions (paraphrases or not: either way a realistic query)."""
    with open(data_dir / "qqp" / "qqp_pairs_40k.tsv", encoding="utf-8", newline="") as fh:
        rows = [r for r in list(csv.reader(fh, delimiter="\t"))[1:] if r[1].strip()]
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r[1], r[2])
        if len(seen) == 3000:
            break
    embed = use_embedder.embed_sync  # type: ignore[attr-defined]
    stored = np.asarray(embed(list(seen)), dtype=np.float32)
    asked = np.asarray(embed(list(seen.values())[:500]), dtype=np.float32)
    return _unit(stored), _unit(asked)


def test_graph_agrees_with_exact_on_real_question_embeddings(
    qqp_embeddings: tuple[np.ndarray, np.ndarray],
) -> None:
    stored, asked = qqp_embeddings
    index = PartitionIndex(stored.shape[1], hnsw_from=1000)
    index.add(np.arange(len(stored)), stored)
    assert index.is_hnsw and len(index) == len(stored)
    exact = _exact_top(stored, asked, 1)[:, 0]
    best = (asked @ stored.T).max(axis=1)
    got = np.empty(len(asked), dtype=np.int64)
    for i, q in enumerate(asked):
        found = index.search(q, 5)
        got[i] = found[0][0]
        # the similarity returned is the cosine of the full vectors (int16 re-scoring)
        assert found[0][1] == pytest.approx(float(stored[got[i]] @ q), abs=1e-4)
    # Where a cache hit is possible (cosine at or above the default semantic threshold;
    # 0.79, below today's default, for margin) the graph must find what an exact scan
    # finds; below it, near ties may swap.
    hit_zone = best >= min(0.79, Settings().semantic_threshold)
    assert hit_zone.sum() >= 20
    assert (got == exact)[hit_zone].mean() >= 0.99
    assert (got == exact).mean() >= 0.95


def test_graph_recall_on_vectors_with_the_real_spectrum(
    qqp_embeddings: tuple[np.ndarray, np.ndarray],
) -> None:
    """20k Gaussian vectors with the mean and covariance of the real embeddings (the
    benchmark's model), queries = a stored vector + 1% noise: the true neighbour is found."""
    stored, _ = qqp_embeddings
    rng = np.random.default_rng(7)
    mean = stored.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(stored.T.astype(np.float64)))
    factor = (eigvec * np.sqrt(np.clip(eigval, 0, None))).astype(np.float32)
    vectors = _unit(mean + rng.standard_normal((20_000, stored.shape[1])).astype(np.float32)
                    @ factor.T)
    index = PartitionIndex(stored.shape[1])
    index.add(np.arange(len(vectors)) + 100, vectors)  # labels need not be row numbers
    targets = rng.choice(len(vectors), 300, replace=False)
    queries = _unit(vectors[targets] + rng.standard_normal((300, stored.shape[1])) * 0.01)
    truth = _exact_top(vectors, queries, 1)[:, 0]
    got = np.array([index.search(q, 5)[0][0] - 100 for q in queries])
    assert (got == truth).mean() >= 0.99


def test_isotropic_vectors_still_reasonable() -> None:
    """Isotropic random vectors are the adversarial case for a graph (and PCA keeps only
    REDUCED_DIM of 512 equal directions); re-scoring still finds most true neighbours."""
    rng = np.random.default_rng(3)
    vectors = _unit(rng.standard_normal((5000, 512)).astype(np.float32))
    index = PartitionIndex(512, hnsw_from=2048)
    index.add(np.arange(len(vectors)), vectors)
    targets = rng.choice(len(vectors), 200, replace=False)
    queries = _unit(vectors[targets] + rng.standard_normal((200, 512)) * 0.01)
    got = np.array([index.search(q, 1)[0][0] for q in queries])
    assert (got == targets).mean() >= 0.9


def _spread(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors with a decaying spectrum (like sentence embeddings), cheap to make."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(np.arange(1, dim + 1))
    return _unit(rng.standard_normal((n, dim)) * scales)


def _kept(index: PartitionIndex, labels: list[int]) -> np.ndarray:
    """The vectors a graph partition re-scores with (int16 rows times their scales)."""
    rows = np.array([index._rows[label] for label in labels])
    return index._matrix[rows].astype(np.float32) * index._scales[rows, None]


def _graph_cosine(index: PartitionIndex, labels: list[int], vectors: np.ndarray) -> float:
    """Worst agreement between the graph's (int8) coordinates at each label's row and that
    label's vector projected: ~1 when every row holds its own label's vector."""
    assert index._hnsw is not None
    rows = np.array([index._rows[label] for label in labels])
    stored = np.asarray(index._hnsw.get(rows), dtype=np.float32).reshape(len(rows), -1)
    return float(np.einsum("ij,ij->i", _unit(stored), _unit(index._reduce(vectors))).min())


def test_incremental_growth_switches_to_graph_and_keeps_every_vector() -> None:
    dim = 128
    vectors = _spread(3000, dim, 1)
    index = PartitionIndex(dim, hnsw_from=1000)
    for i, v in enumerate(vectors[:999]):
        index.add(np.array([i]), v[None])
    assert not index.is_hnsw
    index.add(np.array([999]), vectors[999][None])
    assert index.is_hnsw  # the projection is fitted on the first 1,000 vectors
    for i in range(1000, 3000):  # added after the fit: projected with it
        index.add(np.array([i]), vectors[i][None])
    assert len(index) == 3000
    # every vector is kept (int16 rows within their quantisation step) ...
    assert np.abs(_kept(index, list(range(3000))) - vectors).max() < 1e-4
    # ... and found by the graph: a self-query is its own nearest neighbour, but an HNSW
    # walk (built by several threads, so not deterministic) may rarely miss one; seen once
    # in a loaded CI run (428 of 429). Recall is measured on real embeddings above.
    queries = range(0, 3000, 7)
    hits = sum(index.search(vectors[i], 1)[0][0] == i for i in queries)
    assert hits >= 0.99 * len(queries)


def test_remove_and_replace_stay_in_step() -> None:
    dim = 96
    vectors = _spread(2600, dim, 2)
    index = PartitionIndex(dim, hnsw_from=500)
    index.add(np.arange(2500), vectors[:2500])
    removed = set(range(0, 2500, 3))
    for label in removed:
        assert index.remove(label)
    assert not index.remove(0)  # already gone
    assert len(index) == 2500 - len(removed)
    # the graph names vectors by row: still exactly one graph entry per row after the moves
    assert index._hnsw is not None and len(index._hnsw) == len(index)
    assert bool(np.all(index._hnsw.contains(np.arange(len(index)))))
    for label in list(removed)[:50]:
        assert label not in index
        assert all(found not in removed for found, _ in index.search(vectors[label], 5))
    # every row's graph vector is its own label's (a moved row was renamed, not re-added
    # under another's coordinates): checked on all rows, exactly, whatever the graph walk does
    survivors = [label for label in range(2500) if label not in removed]
    assert sorted(index._rows[label] for label in survivors) == list(range(len(index)))
    assert _graph_cosine(index, survivors, vectors[survivors]) > 0.98
    # survivors (some moved rows) are found by the walk with their own similarity (a moved
    # row keeps its int16 scale); an approximate walk over a graph with a third of its nodes
    # deleted may rarely miss one (1 of 200 seen once in CI), so recall is bounded, not exact
    found = 0
    for label in survivors[:300]:
        own = float(vectors[label] @ vectors[label])
        best = index.search(vectors[label], 1)[0]
        if best[0] == label:
            assert best[1] == pytest.approx(own, abs=1e-4)
            found += 1
    assert found >= 0.99 * 300
    # re-adding a label replaces its vector, in the graph and in the re-scoring rows
    index.add(np.array([1]), vectors[2550][None])
    assert np.abs(_kept(index, [1]) - vectors[2550]).max() < 1e-4
    assert _graph_cosine(index, [1], vectors[2550][None]) > 0.98
    assert index.search(vectors[1], 1)[0][0] != 1
    assert len(index) == 2500 - len(removed)


def test_a_non_finite_vector_is_never_served() -> None:
    """A row with a NaN (embedders refuse them; a direct ``Store.put`` could pass one) must
    neither be served nor disturb the other rows' similarities in a graph partition."""
    vectors = _spread(1200, 64, 9)
    index = PartitionIndex(64, hnsw_from=1000)
    index.add(np.arange(1200), vectors)
    broken = vectors[7].copy()
    broken[3] = np.nan
    index.add(np.array([5000]), broken[None])
    for i in (7, 8, 100):
        found = index.search(vectors[i], 5)
        assert found[0][0] == i
        assert all(label != 5000 or sim == 0.0 for label, sim in found)
        assert all(np.isfinite(sim) and sim <= 1.0 + 1e-4 for _, sim in found)


def test_small_dimension_keeps_all_components() -> None:
    """Below REDUCED_DIM dimensions the projection is a rotation: nothing is lost."""
    vectors = _spread(1500, 16, 4)
    index = PartitionIndex(16, hnsw_from=1000)
    index.add(np.arange(1500), vectors)
    assert index.is_hnsw and index._proj.shape == (16, 16)
    # usearch builds the graph on several threads, so a run may miss a neighbour or two
    # (measured 0-2 of 137); a projection that dropped components would miss far more.
    found = [index.search(vectors[i], 1)[0][0] == i for i in range(0, 1500, 11)]
    assert float(np.mean(found)) >= 0.97


def test_k_larger_than_candidates_and_partition() -> None:
    vectors = _spread(1200, 64, 5)
    index = PartitionIndex(64, hnsw_from=1000)
    index.add(np.arange(1200), vectors)
    k = CANDIDATES + 20
    found = index.search(vectors[3], k)
    assert len(found) == k and found[0][0] == 3
    sims = [s for _, s in found]
    assert sims == sorted(sims, reverse=True)
    assert index.search(vectors[3], 0) == []


def test_save_load_round_trip(tmp_path: Path) -> None:
    dim = 256
    vectors = _spread(3000, dim, 6)
    index = PartitionIndex(dim, hnsw_from=1000)
    index.add(np.arange(10, 3010), vectors)
    index.remove(20)
    path = tmp_path / "p.usearch"
    assert index.save(path)
    loaded = PartitionIndex.load(path, dim, 1000)
    assert loaded.is_hnsw and len(loaded) == len(index) == 2999
    assert loaded._proj.shape == (dim, REDUCED_DIM)
    for i in range(0, 3000, 13):
        assert loaded.search(vectors[i], 5) == index.search(vectors[i], 5)
    assert 20 not in loaded
    # the loaded partition keeps taking writes
    loaded.add(np.array([5000]), vectors[11][None])
    found = loaded.search(vectors[11], 2)  # labels 21 and 5000 now share a vector
    assert {label for label, _ in found} == {21, 5000}
    own = float(vectors[11] @ vectors[11])
    assert all(s == pytest.approx(own, abs=1e-4) for _, s in found)


def test_exact_partition_is_not_saved(tmp_path: Path) -> None:
    index = PartitionIndex(32, hnsw_from=1000)
    index.add(np.arange(10), _spread(10, 32, 8))
    assert not index.save(tmp_path / "small.usearch")
    assert not (tmp_path / "small.usearch").exists()


def test_unusable_saved_files_are_refused(tmp_path: Path) -> None:
    """Refused files make the stores rebuild from their rows (ValueError is their signal)."""
    from usearch.index import Index

    dim = 64
    vectors = _spread(1500, dim, 9)
    index = PartitionIndex(dim, hnsw_from=1000)
    index.add(np.arange(1500), vectors)
    path = tmp_path / "p.usearch"
    index.save(path)
    with pytest.raises(ValueError):
        PartitionIndex.load(path, dim * 2, 1000)  # another embedder's dimension
    # an index saved by the previous layout (full-dimension cosine graph, no vectors file)
    old = tmp_path / "old.usearch"
    legacy = Index(ndim=dim, metric="cos", dtype="i8")
    legacy.add(np.arange(1500), vectors)
    legacy.save(str(old))
    with pytest.raises(ValueError, match="older index layout"):
        PartitionIndex.load(old, dim, 1000)
    # graph and vectors out of step (e.g. a crash between the two writes)
    index.remove(5)
    index.save(tmp_path / "q.usearch")
    (tmp_path / "q.usearch.vectors.npz").replace(tmp_path / "p.usearch.vectors.npz")
    with pytest.raises(ValueError):
        PartitionIndex.load(path, dim, 1000)


def test_full_dimension_graph_for_top_k_retrieval(tmp_path: Path) -> None:
    """``reduced_dim=None`` (document retrieval's chunk index) keeps every dimension: the
    projection is a rotation, a top-100 is as good as an exact scan's, and a saved file
    of one kind is refused by the other, so the caller rebuilds instead of mixing them."""
    dim = 96
    vectors = _spread(4000, dim, 11)
    index = PartitionIndex(dim, hnsw_from=1000, reduced_dim=None)
    index.add(np.arange(4000), vectors)
    assert index.is_hnsw and index._proj.shape == (dim, dim)
    rng = np.random.default_rng(5)
    overlap = []
    for i in rng.choice(4000, 50, replace=False):
        q = vectors[i] + 0.05 * rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        got = {label for label, _ in index.search(q, 100)}
        exact = set(np.argsort(-(vectors @ q))[:100].tolist())
        overlap.append(len(got & exact) / 100)
    # ~0.952 over repeated builds (the threaded build varies; 0.947 once under load); the
    # 64-component graph on these vectors gives 0.87, an exact scan 1.0.
    assert float(np.mean(overlap)) >= 0.92
    path = tmp_path / "full.usearch"
    assert index.save(path)
    assert PartitionIndex.load(path, dim, 1000, None)._proj.shape == (dim, dim)
    with pytest.raises(ValueError):
        PartitionIndex.load(path, dim, 1000)  # a reduced index was asked for


def _blocked_rebuilds(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background rebuilds wait for the returned event, so a test can write meanwhile."""
    release = threading.Event()
    real = PartitionIndex.rebuilt.__func__  # type: ignore[attr-defined]

    def gated(cls: type[PartitionIndex], *args: Any, **kwargs: Any) -> PartitionIndex:
        assert release.wait(60)
        return real(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(PartitionIndex, "rebuilt", classmethod(gated))
    return release


def _churn(index: VectorIndex, part: tuple[str, str], vectors: np.ndarray,
           live: dict[int, int]) -> None:
    """Replace every live label by a new one (a new vector): as many removals as entries."""
    for label in sorted(live):
        index.remove(part, label)
        new = label + 100_000
        live[new] = live.pop(label) + 1
        index.add(part, new, vectors[live[new]])


def test_a_worn_graph_is_rebuilt_in_the_background_without_losing_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _spread(4000, 64, 11)
    index = VectorIndex(64, hnsw_from=500)
    part = ("ns", "fp")
    live = {i: 2 * i for i in range(1500)}  # label -> row of ``vectors``
    for label, row in live.items():
        index.add(part, label, vectors[row])
    before = index.partition(part)
    assert before is not None and before.is_hnsw
    release = _blocked_rebuilds(monkeypatch)
    _churn(index, part, vectors, live)  # 1,500 removals ≥ max(1,024, 1,500 live)
    assert index.partition(part) is before  # still serving while the rebuild waits
    # writes during the rebuild: new labels, removals of live ones, a replaced vector
    for label in range(900_000, 900_040):
        live[label] = 3001 + label - 900_000
        index.add(part, label, vectors[live[label]])
    gone = sorted(live)[:25]
    for label in gone:
        index.remove(part, label)
        del live[label]
    changed = sorted(live)[30]
    live[changed] = 3999
    index.add(part, changed, vectors[3999])
    release.set()
    index.wait_rebuilds(60)
    after = index.partition(part)
    assert after is not None and after is not before and after.is_hnsw
    assert len(after) == len(live) and after.retired < 100  # only the replayed removals
    # every write made during the rebuild is in the new partition, exactly (the replaced
    # vector too) ...
    assert set(after._rows) == set(live)
    labels = list(live)
    assert np.abs(_kept(after, labels) - vectors[[live[label] for label in labels]]).max() < 1e-4
    # ... and found by its graph (an approximate walk: recall bounded, not exact)
    queries = [*list(live.items())[::7], (changed, 3999)]
    hits = sum(index.search(part, vectors[row], 1)[0][0] == label for label, row in queries)
    assert hits >= 0.99 * len(queries)
    returned = {found for row in range(0, 4000, 9) for found, _ in index.search(
        part, vectors[row], 5)}
    assert not returned & set(gone) and returned <= set(live)


def test_a_partition_dropped_during_its_rebuild_stays_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _spread(3200, 64, 12)
    index = VectorIndex(64, hnsw_from=500)
    part = ("tenant", "fp")
    live = {i: 2 * i for i in range(1100)}
    for label, row in live.items():
        index.add(part, label, vectors[row])
    release = _blocked_rebuilds(monkeypatch)
    _churn(index, part, vectors, live)
    index.drop_namespace("tenant")  # e.g. the tenant's cache was cleared
    release.set()
    index.wait_rebuilds(60)
    assert index.partition(part) is None and index.search(part, vectors[0], 1) == []
