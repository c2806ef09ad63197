"""Hand-written traps and paraphrases through the whole semantic pipeline, shipped defaults.

    .venv/bin/python bench/traps.py [--out bench/results/traps.md] [--no-tuning]

The report splits measure the cache on other people's data; these two lists
(``tests/data/traps.tsv``, ``tests/data/paraphrases.tsv``) are what a new user tries first:
a question stored with an answer, then a near-miss that must never get that answer
(numbers, entity swaps, negation, antonyms, swapped arguments, units, language, time), or a
rewording they expect to hit. Each pair gets its own store partition, so the only candidate
is the pair's own stored question and a served answer is exactly the one the pair is about.

The lookup is built by ``components.build_semantic`` from default ``Settings`` (every
``REPRISE_*`` variable of this machine ignored), so the bench measures whatever verifier,
guards and threshold ship when it runs; why a pair missed (or why a trap was stopped) is the
lookup's own explanation. A second section counts what the two newest guards (ordered
arguments, closed-class substitutions) refuse on the tuning splits' labelled duplicates:
the price they cost in recall, measured where the verifier was tuned, not where it is
reported. Writes ``bench/results/traps.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from reprise.cache import guards as g  # noqa: E402
from reprise.cache.semantic import SemanticLookup  # noqa: E402
from reprise.components import build_semantic  # noqa: E402
from reprise.config import Settings  # noqa: E402
from reprise.embed.use import UseEmbedder  # noqa: E402
from reprise.store.base import CacheEntry  # noqa: E402
from reprise.store.memory import MemoryStore  # noqa: E402

DATA = ROOT / "tests" / "data"
RESULTS = ROOT / "bench" / "results"
NS = "traps"
# The guards the tuning section measures, and the ones that were there before them (a pair
# they refuse too costs nothing new).
NEW_GUARDS: dict[str, Callable[[str, str], str | None]] = {
    "ordered arguments": g.ordered_arguments_guard,
    "units, currencies, languages, days, months, time": g.class_guard,
}
OLDER_GUARDS = (g.language_guard, g.number_guard, g.entity_guard, g.negation_guard,
                g.antonym_guard)


@dataclass(frozen=True, slots=True)
class Pair:
    stored: str
    incoming: str
    group: str  # trap category, or paraphrase language
    lang: str


@dataclass(frozen=True, slots=True)
class Outcome:
    pair: Pair
    served: bool
    similarity: float  # cosine of the incoming question to the stored one (-1: none)
    stage: str  # "served", or the stage that refused: "floor", "guard", "verifier", …
    why: str  # the lookup's explanation


def read_tsv(path: Path, group_column: str) -> list[Pair]:
    """Rows of a hand-written list; ``group_column`` names the column results are grouped by."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [Pair(r["stored"], r["incoming"], r[group_column], r["lang"]) for r in rows]


def shipped_settings() -> Settings:
    """Default settings: a ``REPRISE_SEMANTIC_THRESHOLD`` left in this shell must not make the
    report describe a configuration that does not ship."""
    for name in [n for n in os.environ if n.upper().startswith("REPRISE_")]:
        del os.environ[name]
    return Settings()


async def run_pair(lookup: SemanticLookup, fingerprint: str, pair: Pair) -> Outcome:
    """Store ``pair.stored`` alone in its partition, ask ``pair.incoming`` through the public
    ``find``, and keep the lookup's own explanation of its verdict (the stage that decided:
    the cosine floor, a guard, feedback, a rule or the verifier, with its numbers)."""
    vector = await lookup.embed(pair.stored)
    await lookup.store.put(CacheEntry(key=fingerprint, namespace=NS, fingerprint=fingerprint,
                                      question=pair.stored, response=b"{}", vector=vector))
    decision = await lookup.find(NS, fingerprint, pair.incoming,
                                 await lookup.embed(pair.incoming))
    why = decision.explanation
    sim = -1.0 if why.similarity is None else why.similarity
    if decision.match is not None:
        return Outcome(pair, True, sim, "served", f"served ({why.stage}): {why.reason}")
    return Outcome(pair, False, sim, why.stage, why.reason)


async def run_all(pairs: list[Pair], prefix: str, lookup: SemanticLookup) -> list[Outcome]:
    return [await run_pair(lookup, f"{prefix}-{i}", p) for i, p in enumerate(pairs)]


@dataclass
class GuardCost:
    """One new guard on one tuning set's labelled pairs."""

    positives: int = 0
    negatives: int = 0
    refused_pos: int = 0
    only_new: int = 0  # refused positives that every older guard let through
    refused_neg: int = 0
    examples: list[tuple[str, str, str]] | None = None


def tuning_costs() -> dict[str, dict[str, GuardCost]]:
    """Per tuning set and new guard: duplicates (label 1) and non-duplicates it refuses.

    Asked the way the cache asks (the incoming ``q2`` against the stored ``q1``); both
    guards are symmetric, so the direction does not change a count."""
    out: dict[str, dict[str, GuardCost]] = {}
    for name, loader in sd.TUNING.items():
        pairs = loader()
        out[name] = {}
        for gname, guard in NEW_GUARDS.items():
            cost = GuardCost(examples=[])
            for p in pairs:
                reason = guard(p.q2, p.q1)
                if p.label == 1:
                    cost.positives += 1
                    if reason is not None:
                        cost.refused_pos += 1
                        if not any(o(p.q2, p.q1) for o in OLDER_GUARDS):
                            cost.only_new += 1
                            assert cost.examples is not None
                            cost.examples.append((p.q1, p.q2, reason))
                else:
                    cost.negatives += 1
                    cost.refused_neg += reason is not None
            out[name][gname] = cost
    return out


def md_cell(text: str, limit: int = 0) -> str:
    text = " ".join(text.split())
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def traps_section(traps: list[Outcome]) -> list[str]:
    stages = sorted({o.stage for o in traps if not o.served})
    lines = ["## Traps served (target: 0)", "",
             "*stopped: X* is the stage that decided in the lookup; *a guard refuses* is "
             "`run_guards` on the pair alone, whatever its cosine: the traps that stay "
             "safe however the floor and the verifier move.", "",
             "| category | pairs | served | " + " | ".join(f"stopped: {s}" for s in stages)
             + " | a guard refuses |", "| --- | --- | --- |" + " --- |" * (len(stages) + 1)]
    by_cat: dict[str, list[Outcome]] = defaultdict(list)
    for o in traps:
        by_cat[o.pair.group].append(o)
    for cat, outs in [*by_cat.items(), ("**all**", traps)]:
        c = Counter(o.stage for o in outs)
        guarded = sum(not g.run_guards(o.pair.incoming, o.pair.stored).ok for o in outs)
        lines.append(f"| {cat} | {len(outs)} | {c['served']} | "
                     + " | ".join(str(c[s]) for s in stages) + f" | {guarded} |")
    served = [o for o in traps if o.served]
    lines += ["", "Served traps:" if served else "No trap was served.", ""]
    lines += [f"- {o.pair.group}: `{md_cell(o.pair.stored)}` → `{md_cell(o.pair.incoming)}` "
              f"({md_cell(o.why)})" for o in served]
    unguarded = [o for o in traps if g.run_guards(o.pair.incoming, o.pair.stored).ok]
    lines += ["", "No guard refuses these; they rest on the cosine floor and the verifier:", ""]
    lines += [f"- {o.pair.group}: `{md_cell(o.pair.stored)}` → `{md_cell(o.pair.incoming)}` "
              f"(cosine {o.similarity:.3f}; {'served' if o.served else o.stage}: "
              f"{md_cell(o.why)})" for o in unguarded] or ["- none"]
    return lines


def paraphrase_section(paras: list[Outcome]) -> list[str]:
    lines = ["## Paraphrases served", "",
             "| language | pairs | served | share |", "| --- | --- | --- | --- |"]
    by_lang: dict[str, list[Outcome]] = defaultdict(list)
    for o in paras:
        by_lang[o.pair.group].append(o)
    for lang, outs in [*sorted(by_lang.items()), ("**all**", paras)]:
        n = sum(o.served for o in outs)
        lines.append(f"| {lang} | {len(outs)} | {n} | {n / max(len(outs), 1):.2f} |")
    misses = [o for o in paras if not o.served]
    lines += ["", "### Paraphrase misses", ""]
    if not misses:
        return [*lines, "None."]
    lines += ["| lang | stored | asked | cosine | stage | why |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {o.pair.lang} | {md_cell(o.pair.stored)} | {md_cell(o.pair.incoming)} | "
              f"{o.similarity:.3f} | {o.stage} | {md_cell(o.why)} |" for o in misses]
    return lines


def tuning_section(costs: dict[str, dict[str, GuardCost]]) -> list[str]:
    lines = ["## What the newest guards cost on the tuning splits", "",
             "Each guard alone over every labelled pair of the tuning splits "
             "(`semantic_data.TUNING`: QQP 40k sample, LCQMC dev, BQ dev, ASSIN 2 dev). "
             "*Duplicates refused* is recall the guard can take away; *of which only it* "
             "counts those every older guard (language, numbers, entities, negation, "
             "antonyms) let through; *non-duplicates refused* is what it catches.", "",
             "| set | guard | duplicates | refused | share | of which only it "
             "| non-duplicates refused |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, per_guard in costs.items():
        for gname, c in per_guard.items():
            lines.append(f"| {name} | {gname} | {c.positives} | {c.refused_pos} | "
                         f"{100 * c.refused_pos / max(c.positives, 1):.2f}% | {c.only_new} | "
                         f"{c.refused_neg} of {c.negatives} |")
            totals[gname][0] += c.positives
            totals[gname][1] += c.refused_pos
    for gname, (pos, ref) in totals.items():
        lines.append(f"| **all** | {gname} | {pos} | {ref} | {100 * ref / max(pos, 1):.2f}% "
                     "| | |")
    for gname in NEW_GUARDS:
        examples = [(n, e) for n, per_guard in costs.items()
                    for e in (per_guard[gname].examples or [])]
        lines += ["", f"Duplicates refused by *{gname}* alone ({len(examples)}):", ""]
        lines += [f"- {n}: `{md_cell(q1, 90)}` / `{md_cell(q2, 90)}` — {md_cell(r)}"
                  for n, (q1, q2, r) in examples] or ["- none"]
    return lines


def provenance() -> str:
    """The commit measured, and whether shipped code under ``src/`` differed from it: the
    verifier is retrained beside this bench, so a table must say which one it measured."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line]
    return (f"commit {head}" + (f", with {len(dirty)} uncommitted change(s) under `src/`"
                                if dirty else "") + f", {time.strftime('%Y-%m-%d %H:%M')}")


def report(traps: list[Outcome], paras: list[Outcome], lookup: SemanticLookup,
           seconds: float, costs: dict[str, dict[str, GuardCost]] | None) -> str:
    lines = [
        "# Hand-written traps and paraphrases (`bench/traps.py`)",
        "",
        "Each pair alone in its own partition of a `MemoryStore`: the first question stored "
        "with an answer, the second asked through `SemanticLookup.find` as "
        "`components.build_semantic` wires it from default `Settings` (cosine floor "
        f"{lookup.threshold:.3f}, verifier cutoffs {lookup.verifier.point.cutoffs}, real USE "
        "embedder). Lists: `tests/data/traps.tsv` (must never be served), "
        "`tests/data/paraphrases.tsv` (a user expects a hit); both written by hand, not "
        f"tuned to the pipeline. Lookups took {seconds:.0f} s. Measured at {provenance()}.",
        "",
        *traps_section(traps),
        "",
        *paraphrase_section(paras),
    ]
    if costs is not None:
        lines += ["", *tuning_section(costs)]
    return "\n".join(lines) + "\n"


async def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "traps.md")
    ap.add_argument("--no-tuning", action="store_true",
                    help="skip the guards' cost on the tuning splits (needs ../shared/data)")
    args = ap.parse_args()
    settings = shipped_settings()
    embedder = UseEmbedder()
    lookup = build_semantic(settings, MemoryStore(embedder.dim), embedder)
    assert isinstance(lookup, SemanticLookup)
    t0 = time.time()
    traps = await run_all(read_tsv(DATA / "traps.tsv", "category"), "trap", lookup)
    paras = await run_all(read_tsv(DATA / "paraphrases.tsv", "lang"), "para", lookup)
    seconds = time.time() - t0
    costs = None if args.no_tuning or not sd.DATA.exists() else tuning_costs()
    md = report(traps, paras, lookup, seconds, costs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    asyncio.run(main())
