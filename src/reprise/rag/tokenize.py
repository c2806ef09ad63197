"""Text → search terms for the BM25 leg, for Chinese, Portuguese and English alike.

BM25 only matches what the tokenizer makes equal, so the same function runs on chunks at
ingestion and on questions at query time:

* Unicode NFKC (full-width letters and ligatures such as ``ﬁ`` become plain letters), then
  case folding;
* Han runs are segmented into words with jieba (``rjieba``, search mode: a long word also
  yields its parts, so ``中华人民共和国`` matches a question that says ``人民``); single
  characters are too common to rank with and whole sentences never match;
* Latin runs are split into words, accents folded (``informação`` = ``informacao``, since
  users and OCR drop them), stop words of English and Portuguese removed, and each word
  reduced by the Snowball stemmer of the text's language (``proteins`` = ``protein``,
  ``decretos`` = ``decret``). The stemmer is chosen per text by function words and
  Portuguese diacritics; a text with no evidence either way (a short question) gets the
  stems of both languages, so it still matches documents of either. Stemming lifted BM25
  from 0.657 to 0.699 nDCG@10 on the SciFact train split (``bench/retrieval.py
  --tune-bm25``);
* numbers are kept whole (``2020``, ``56``): legal and technical questions hinge on them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_KANA_HANGUL = "\u3040-\u30ff\uac00-\ud7af"
_RUN = re.compile(
    rf"(?P<han>[{_HAN}]+)|(?P<kh>[{_KANA_HANGUL}]+)|(?P<word>[^\W_{_HAN}{_KANA_HANGUL}]+)")

EN_STOP = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself no nor not of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself
yourselves
""".split())

# Accent-folded, like the tokens they are compared with.
PT_STOP = frozenset("""
a ao aos aquela aquelas aquele aqueles aquilo as ate com como da das de dela delas dele
deles depois do dos e ela elas ele eles em entre era eram essa essas esse esses esta estao
estas este estes eu foi foram ha isso isto ja lhe lhes mais mas me mesmo meu meus minha
minhas muito na nao nas nem no nos nossa nossas nosso nossos num numa o os ou para pela
pelas pelo pelos por qual quando que quem se sem ser seu seus so sua suas tambem te tem
tinha to tu tua tuas um uma umas uns voce voces vos
""".split())

# Common function words of Chinese: they carry no topic and would dominate short queries.
ZH_STOP = frozenset("""
的 了 是 在 和 与 及 或 等 也 就 都 而 但 并 对 把 被 从 向 以 为 于 之 其 这 那 此 该 有 个
吗 呢 吧 啊 么 什么 怎么 如何 哪些 哪 是否 可以 应当 我 你 他 她 它 我们 你们 他们
""".split())

STOPWORDS = EN_STOP | PT_STOP
_PT_HINTS = frozenset("""
de da do das dos que nao para com uma um os as por pelo pela mais ao em no na nos nas se
sao foi ser como ou seu sua
""".split())
_EN_HINTS = frozenset("""
the of and to in is are was for that with as on by be this from which an or it were
""".split())


def fold_accents(text: str) -> str:
    """``ação`` → ``acao``: strips combining marks, leaves CJK untouched."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@lru_cache(maxsize=4)
def _stemmer(language: str) -> Callable[[str], str]:
    import snowballstemmer

    stem = snowballstemmer.stemmer(language)
    cache: dict[str, str] = {}

    def run(word: str) -> str:
        out = cache.get(word)
        if out is None:
            out = stem.stemWord(word)
            if len(cache) < 200_000:
                cache[word] = out
        return out

    return run


_PT_MARKS = re.compile(r"[ãõçâêôáéíóúà]")


def _latin_languages(text: str) -> tuple[str, ...]:
    """Stemmer languages for ``text``: one when it reads clearly as Portuguese or English,
    both when it gives no evidence (a short question such as "feriados decretos")."""
    words = fold_accents(text).split()
    pt = sum(1 for w in words if w in _PT_HINTS) + 2 * len(_PT_MARKS.findall(text))
    en = sum(1 for w in words if w in _EN_HINTS)
    if pt == en:
        return ("english", "portuguese")
    return ("portuguese",) if pt > en else ("english",)


@lru_cache(maxsize=1)
def _jieba() -> Callable[[str], list[str]]:
    import rjieba

    def cut(text: str) -> list[str]:
        return list(rjieba.cut_for_search(text))

    return cut


def tokenize(text: str, *, stem: bool = True) -> list[str]:
    """Search terms of ``text`` in order (duplicates kept: BM25 counts them)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    latin: list[tuple[int, str]] = []  # (position in out, folded word) to stem afterwards
    for match in _RUN.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "han":
            out.extend(w for w in _jieba()(piece) if w.strip() and w not in ZH_STOP)
        elif kind == "kh":
            out.extend(piece)  # kana/Hangul: characters, rare in our collections
        else:
            word = fold_accents(piece)
            if word in STOPWORDS:
                continue
            if word.isdigit() or not stem:
                out.append(word)
            else:
                latin.append((len(out), word))
                out.append(word)
    if not latin:
        return out
    stemmers = [_stemmer(lang) for lang in _latin_languages(text)]
    extra: list[str] = []
    for pos, word in latin:
        stems = dict.fromkeys(stem(word) for stem in stemmers)
        first, *others = stems
        out[pos] = first
        extra.extend(others)
    return out + extra
