"""Rule guards: cheap, explainable vetoes on a semantic-cache candidate.

Embeddings put "capital of France" and "capital of Germany" close together because they
share everything but the one word that decides the answer. A wrong cached answer is worse
than a miss, so before a candidate is served these rules look for the differences that
embeddings blur: numbers, named entities, negation, antonyms, arguments swapped around an
asymmetric connective ("5 km to miles" / "5 miles to km"), one unit, currency, language,
weekday, month or time reference put for another, and the answer's language.

Each guard is ``(query, candidate) -> reason | None``. They are deliberately asymmetric-safe
(swapping the two texts gives the same verdict) and tuned for precision: a guard fires only
on a difference that changes the answer in the tuning data (QQP 40k, LCQMC dev, BQ dev,
ASSIN 2 dev), and softer signals are left to the learned verifier as features.

Portuguese, Chinese and English are covered; other languages fall through the word lists
and are judged by the embedder and the verifier alone.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

Guard = Callable[[str, str], "str | None"]


@dataclass(frozen=True, slots=True)
class GuardResult:
    ok: bool
    reason: str | None = None


# --------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_LATIN_WORD = re.compile(r"(?<![\w])[A-Za-zÀ-ÖØ-öø-ÿ][A-Za-zÀ-ÖØ-öø-ÿ0-9'’\-]*")


def normalize(text: str) -> str:
    """NFKC (full-width digits and letters become ASCII) and collapsed whitespace."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (CJK runs stay one token; use ``cjk_words`` to segment them)."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(normalize(text))]


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


@lru_cache(maxsize=4096)
def cjk_tagged(text: str) -> tuple[tuple[str, str], ...]:
    """Chinese words with jieba part-of-speech tags (empty if rjieba is not installed)."""
    try:
        import rjieba
    except ImportError:  # pragma: no cover - rjieba ships with the package
        return ()
    return tuple((w, t) for w, t in rjieba.tag(normalize(text)) if w.strip())


_ZH_FUNCTION = frozenset(
    "的了吗呢啊吧呀么是我你他她它们这那有在和与就也都还要会能可以请问怎么什么如何为"
)


def content_units(text: str) -> frozenset[str]:
    """What a text is about: Latin words minus function words, Han characters minus
    function and negation characters (Chinese is compared per character, no segmenter)."""
    t = normalize(text).lower()
    units = {w for w in words(t) if w not in _PT_STOP and w not in _EN_STOP and not _CJK.search(w)}
    units -= _NEG_WORDS
    units.update(ch for ch in t if _CJK.match(ch) and ch not in _ZH_FUNCTION)
    units -= set(_ZH_NEG_CHARS)
    return frozenset(units)


def content_overlap(a: str, b: str) -> float:
    """Share of the smaller side's content units found on the other side (0..1)."""
    ua, ub = content_units(a), content_units(b)
    if not ua or not ub:
        return 0.0
    return len(ua & ub) / min(len(ua), len(ub))


# --------------------------------------------------------------------------------------------
# language
# --------------------------------------------------------------------------------------------
_PT_STOP = frozenset(
    "o os a as um uma uns umas de do da dos das em no na nos nas por para com sem que não "
    "é são ser está estão foi como mais mas ou se eu você voce ele ela isso isto esse essa "
    "qual quais quando onde porque porquê quem meu minha seu sua ao aos à às pelo pela "
    "explique explica fazer tem há também muito já entre sobre até ainda".split()
)
_EN_STOP = frozenset(
    "the a an of in on at to for with without is are was were be been am do does did "
    "what which who whom whose when where why how i you he she it we they my your his her "
    "its our their this that these those and or but not no can could should would will "
    "shall may might must have has had there from by as if than then so about into "
    "best way get make".split()
)
_PT_MARKS = re.compile(r"[ãõçáéíóúâêôà]")


@lru_cache(maxsize=8192)
def detect_language(text: str) -> str:
    """'zh', 'ja', 'ko', 'pt', 'en' or '' when the text gives too little evidence.

    Script decides CJK (any Han/kana/Hangul share above 30 % of letters); Portuguese vs
    English is a vote of function words plus Portuguese diacritics. Short texts with no
    function words ("iPhone 15") return '' so they never trigger the language guard.
    """
    t = normalize(text)
    letters = [ch for ch in t if ch.isalpha()]
    if not letters:
        return ""
    kana = sum(1 for ch in letters if _KANA_HANGUL.match(ch))
    han = sum(1 for ch in letters if _CJK.match(ch))
    if (han + kana) / len(letters) > 0.3:
        if kana:
            return "ko" if re.search(r"[\uac00-\ud7af]", t) else "ja"
        return "zh"
    toks = words(t)
    pt = sum(1 for w in toks if w in _PT_STOP) + 2 * len(_PT_MARKS.findall(t.lower()))
    en = sum(1 for w in toks if w in _EN_STOP)
    if pt == en or max(pt, en) < 1:
        return ""
    return "pt" if pt > en else "en"


def language_guard(query: str, candidate: str) -> str | None:
    """An LLM answers in the question's language, so a cached answer is language-bound."""
    a, b = detect_language(query), detect_language(candidate)
    if a and b and a != b:
        return f"language differs ({a} vs {b})"
    return None


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------
# "one"/"um"/"uma"/"一" are left out on purpose: they are articles or pronouns far more often
# than quantities ("which one", "um carro", "一个问题"), and firing on them loses real hits.
_EN_NUM = {
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "million": 10**6,
    "billion": 10**9,
    "dozen": 12,
    "zero": 0,
}
_PT_NUM = {
    "dois": 2,
    "duas": 2,
    "três": 3,
    "tres": 3,
    "quatro": 4,
    "cinco": 5,
    "seis": 6,
    "sete": 7,
    "oito": 8,
    "nove": 9,
    "dez": 10,
    "onze": 11,
    "doze": 12,
    "treze": 13,
    "catorze": 14,
    "quatorze": 14,
    "quinze": 15,
    "dezesseis": 16,
    "dezessete": 17,
    "dezoito": 18,
    "dezenove": 19,
    "vinte": 20,
    "trinta": 30,
    "quarenta": 40,
    "cinquenta": 50,
    "sessenta": 60,
    "setenta": 70,
    "oitenta": 80,
    "noventa": 90,
    "cem": 100,
    "cento": 100,
    "mil": 1000,
    "milhão": 10**6,
    "milhões": 10**6,
    "bilhão": 10**9,
    "zero": 0,
}
_ORDINALS = {
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "segundo": 2,
    "terceiro": 3,
    "terceira": 3,
    "quarto": 4,
    "quarta": 4,
    "quinto": 5,
    "quinta": 5,
    "sexto": 6,
    "sexta": 6,
    "sétimo": 7,
    "sétima": 7,
    "oitavo": 8,
    "oitava": 8,
    "nono": 9,
    "nona": 9,
    "décimo": 10,
    "décima": 10,
}
_ZH_DIGIT = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZH_UNIT = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
_ZH_NUM_RUN = re.compile(r"第?[零〇一二两三四五六七八九十百千万亿]+")
# Han words that merely contain a numeral character.
_ZH_NOT_NUM = (
    "一下",
    "一样",
    "一起",
    "一直",
    "一般",
    "一定",
    "一切",
    "一些",
    "一点",
    "统一",
    "唯一",
    "万一",
    "一旦",
    "一向",
    "一边",
    "一种",
    "一个",
    "一次",
    "一位",
    "一款",
    "一张",
    "一条",
    "一家",
    "一天",
    "一年",
    "一句",
    "一部",
    "一首",
    "一本",
    "一只",
    "一件",
    "一份",
    "一笔",
    "一辈子",
    "一会",
    "一致",
    "一同",
    "一共",
    "一律",
    "一贯",
    "千万",
    "万一",
    "三星",
    "万能",
    "十分",
    "百度",
    "千万别",
    "四川",
    "三国",
    "五金",
    "一下子",
    "专一",
    "同一",
    "十足",
    "不三不四",
    "乱七八糟",
    "七夕",
    "三亚",
    "十堰",
    "百合",
    "万达",
    "千金",
    "百货",
    "八卦",
    "一加",
    "十字",
    "九寨沟",
    "五一",
    "七彩",
    "一生",
    "一世",
    "万物",
    "一体",
    "一带",
    "一路",
    "一手",
    "一口",
    "一心",
    "一半",
    "百分",
    "亿万",
    "零钱",
    "零食",
    "零件",
    "零售",
    "四季",
    "十一",
    "二手",
)
_NUMBER_TOKEN = re.compile(
    r"(?<![A-Za-z0-9.,])(\d{1,3}(?:[.,]\d{3})+(?![\d.,]*\d)|\d+(?:[.,]\d+)?)(?:(st|nd|rd|th|º|ª|°|k|K)(?![A-Za-z]))?",
    re.UNICODE,
)


def _zh_value(run: str) -> str | None:
    ordinal = run.startswith("第")
    body = run[1:] if ordinal else run
    if not body:
        return None
    total, section, current = 0, 0, 0
    for ch in body:
        if ch in _ZH_DIGIT:
            current = (
                current * 10 + _ZH_DIGIT[ch]
                if current and len(body) > 2 and not any(u in body for u in _ZH_UNIT)
                else _ZH_DIGIT[ch]
            )
        else:
            unit = _ZH_UNIT[ch]
            if unit >= 10_000:
                total += (section + current) * unit
                section = current = 0
            else:
                section += (current or 1) * unit
                current = 0
    value = total + section + current
    return f"#{value}" if ordinal else str(value)


def _latin_number(raw: str, suffix: str | None) -> str:
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+", raw):
        # 1,000 (en) and 1.000 (pt) are thousands; 1,5 and 1.5 are the same decimal.
        value = raw.replace(",", "").replace(".", "")
    else:
        value = raw.replace(",", ".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    value = value.lstrip("0") or "0"
    if suffix in ("k", "K"):
        # "15k" is 15,000 (prices, salaries).
        return str(int(float(value) * 1000)) if value.replace(".", "", 1).isdigit() else value
    return f"#{value}" if suffix and suffix not in ("°",) else value


def numbers(text: str) -> frozenset[str]:
    """Canonical numbers of a text: '2' for 2/two/dois/二/两, '#2' for ordinals (2nd, 第二)."""
    t = normalize(text)
    found: set[str] = set()
    for m in _NUMBER_TOKEN.finditer(t):
        found.add(_latin_number(m.group(1), m.group(2)))
    for w in words(t):
        if w in _EN_NUM:
            found.add(str(_EN_NUM[w]))
        elif w in _PT_NUM:
            found.add(str(_PT_NUM[w]))
        elif w in _ORDINALS:
            found.add(f"#{_ORDINALS[w]}")
    if has_cjk(t):
        cleaned = t
        for word in _ZH_NOT_NUM:
            cleaned = cleaned.replace(word, " ")
        for m in _ZH_NUM_RUN.finditer(cleaned):
            run = m.group(0)
            if run in ("一", "第"):
                continue
            value = _zh_value(run)
            if value is not None:
                found.add(value)
    return frozenset(found)


def number_guard(query: str, candidate: str) -> str | None:
    """Different numbers (versions, years, amounts, ordinals) mean a different answer."""
    a, b = numbers(query), numbers(candidate)
    if a == b:
        return None
    if a and b:
        return f"numbers differ ({', '.join(sorted(a ^ b))})"
    # One side names a number the other does not mention at all ("iPhone price" vs
    # "iPhone 15 price"): still a different question.
    return f"number only on one side ({', '.join(sorted(a ^ b))})"


# --------------------------------------------------------------------------------------------
# named entities
# --------------------------------------------------------------------------------------------
_CAP_STOP = frozenset(
    "i i'm i've i'd i'll what which who how why when where is are do does can should would "
    "will the a an o os as um uma qual quais como por porque quando onde quem é são "
    "ok please por favor".split()
)
_SENTENCE_END = re.compile(r"[.!?。！？:;\n]")
_CJK_ENTITY_TAGS = frozenset({"nr", "ns", "nt", "nz", "nrt", "nrfg"})
# jieba tags some common nouns as places/names; these are not entities in a question.
_CJK_NOT_ENTITY = frozenset(
    "蓝牙 微信 支付宝 中文 英文 英语 汉语 国语 人民币 美元 网银 花呗 借呗 微粒贷 京东 "
    "淘宝 百度 手机 电脑 中国人 国家 上网".split()
)


def entities(text: str) -> frozenset[str]:
    """Proper nouns, lower-cased: capitalised Latin words not at a sentence start, acronyms,
    mixed-case brand names (iPhone), and Chinese person/place/organisation names (jieba POS).
    """
    t = normalize(text)
    found: set[str] = set()
    sentence_start = True
    pos = 0
    for m in _LATIN_WORD.finditer(t):
        if _SENTENCE_END.search(t, pos, m.start()):
            sentence_start = True
        pos = m.end()
        w = m.group(0).strip("-'’")
        lw = w.lower()
        start = sentence_start
        sentence_start = False
        if not w or lw in _CAP_STOP:
            continue
        acronym = len(w) >= 2 and w.isupper() and w.isalpha()
        mixed = any(c.isupper() for c in w[1:]) and any(c.islower() for c in w)
        capital = w[0].isupper() and not start
        if acronym or mixed or capital:
            found.add(lw)
    if has_cjk(t):
        for word, tag in cjk_tagged(t):
            if tag in _CJK_ENTITY_TAGS and len(word) >= 2 and word not in _CJK_NOT_ENTITY:
                if _CJK.search(word):
                    found.add(word)
    return frozenset(found)


_LATIN_RUN = re.compile(r"[a-z0-9\u00c0-\u024f]+")


@lru_cache(maxsize=8192)
def _latin_runs(text_lower: str) -> tuple[str, ...]:
    """Latin words of a text, Chinese characters left out ("qq邮箱" holds the word "qq")."""
    return tuple(_LATIN_RUN.findall(text_lower))


def _mentions(text_lower: str, entity: str) -> bool:
    """Whether a text names the entity, allowing another ending ("Germany's", "Americans",
    "Brazilian" for "Brazil", "MacBook" for "Mac"): a word extending the entity, or sharing
    all but at most two of its last letters and adding at most three. Two names that merely
    share a stem are not each other ("Austria" is not mentioned by "Australia"); an acronym
    of up to three letters keeps matching any word it starts ("UN" / "United Nations")."""
    if _CJK.search(entity):
        return entity in text_lower
    stem = entity[: max(3, len(entity) - 2)]
    if not entity.isalnum():  # "wi-fi", "o'neill": as written, any ending
        return re.search(r"(?<![\w])" + re.escape(stem), text_lower) is not None
    for word in _latin_runs(text_lower):
        if not word.startswith(stem):
            continue
        if len(entity) <= 3 or word.startswith(entity):
            return True
        common = next((k for k, (a, b) in enumerate(zip(word, entity, strict=False)) if a != b),
                      min(len(word), len(entity)))
        if len(entity) - common <= 2 and len(word) - common <= 3:
            return True
    return False


def entity_guard(query: str, candidate: str) -> str | None:
    """Reject a swap of proper nouns (France→Germany, 北京→上海).

    Only a substitution fires: each side names an entity the other never mentions, even in
    lower case. One extra entity on one side is common in true paraphrases ("learn Python"
    vs "learn Python programming language") and is left to the verifier.
    """
    qa, ca = normalize(query).lower(), normalize(candidate).lower()
    only_q = sorted(e for e in entities(query) if not _mentions(ca, e))
    only_c = sorted(e for e in entities(candidate) if not _mentions(qa, e))
    if only_q and only_c:
        return f"named entities differ ({only_q[0]} vs {only_c[0]})"
    return None


# --------------------------------------------------------------------------------------------
# negation
# --------------------------------------------------------------------------------------------
_NEG_WORDS = frozenset(
    "not no never none nobody nothing neither nor cannot can't don't doesn't didn't isn't "
    "aren't wasn't weren't won't wouldn't shouldn't couldn't haven't hasn't hadn't without "
    "não nao nunca sem nem nenhum nenhuma jamais ninguém nada".split()
)
_ZH_NEG_CHARS = "不没别无非未莫勿"
# Words containing a negation character that do not negate the question.
_ZH_NEG_FALSE = (
    "不错",
    "不过",
    "不同",
    "不断",
    "不仅",
    "不管",
    "不如",
    "不得不",
    "非常",
    "无线",
    "无论",
    "无聊",
    "无法",
    "不了",
    "差不多",
    "要不然",
    "不然",
    "不少",
    "莫名",
    "别人",
    "别的",
    "区别",
    "分别",
    "特别",
    "别墅",
    "类别",
    "性别",
    "级别",
    "识别",
    "告别",
    "离别",
    "辨别",
    "无锡",
    "无人机",
    "并非",
    "是非",
    "非洲",
    "未来",
    "未必",
    "无所谓",
    "不客气",
    "不好意思",
    "对不起",
    "了不起",
    "不一定",
    "不久",
    "不停",
    "不知道",
    "不懂",
    "不到",
    "不清楚",
)
_ZH_A_NOT_A = re.compile(r"(.)[不没]\1")
# "No, X does not exist" answers a question; it does not negate X twice. A sentence-opening
# yes/no followed by a comma is an answer particle and is dropped before counting.
_ANSWER_PARTICLE = re.compile(r"(^|[.!?;:]\s+)(?:no|yes|não|nao|sim)\s*[,!]\s*")


def negated(text: str) -> bool:
    """True when the text carries a negation (odd count, so "not un-" pairs cancel out)."""
    t = _ANSWER_PARTICLE.sub(r"\1", normalize(text).lower())
    portuguese = detect_language(t) == "pt"  # "no" is "in the" in Portuguese
    count = sum(
        1
        for w in words(t)
        if (w in _NEG_WORDS and not (portuguese and w == "no")) or w.endswith("n't")
    )
    if has_cjk(t):
        s = _ZH_A_NOT_A.sub("", t)  # 是不是 / 有没有 / 能不能 are yes-no questions
        for word in _ZH_NEG_FALSE:
            s = s.replace(word, "")
        count += sum(s.count(ch) for ch in _ZH_NEG_CHARS)
    return count % 2 == 1


def negation_guard(query: str, candidate: str) -> str | None:
    """A negation present on one side only flips the meaning.

    (Restricting this to lexically close pairs was tried and lost precision on every tuning
    set: reworded pairs with a one-sided negation are mostly different questions too.)
    """
    if negated(query) != negated(candidate):
        return "negation on one side only"
    return None


# --------------------------------------------------------------------------------------------
# antonyms
# --------------------------------------------------------------------------------------------
# Latin entries ending in "*" match word prefixes ("enabl*" → enable, enabled, enabling).
_ANTONYMS_EN: tuple[tuple[str, str], ...] = (
    ("enabl*", "disabl*"),
    ("increas*", "decreas*"),
    ("buy*", "sell*"),
    ("bought", "sold"),
    ("before", "after"),
    ("max", "min"),
    ("maximum", "minimum"),
    ("maximiz*", "minimiz*"),
    ("open*", "clos*"),
    ("start*", "stop*"),
    ("import*", "export*"),
    ("upload*", "download*"),
    ("add", "remove"),
    ("win", "lose"),
    ("winning", "losing"),
    ("best", "worst"),
    ("more", "less"),
    ("most", "least"),
    ("higher", "lower"),
    ("highest", "lowest"),
    ("big*", "small*"),
    ("large*", "small*"),
    ("cheap*", "expensive"),
    ("fast*", "slow*"),
    ("male*", "female*"),
    ("men", "women"),
    ("man", "woman"),
    ("boy*", "girl*"),
    ("good", "bad"),
    ("positive", "negative"),
    ("advantage*", "disadvantage*"),
    ("true", "false"),
    ("left", "right"),
    ("up", "down"),
    ("above", "below"),
    ("hot", "cold"),
    ("love", "hate"),
    ("encrypt*", "decrypt*"),
    ("install*", "uninstall*"),
    ("login", "logout"),
    ("log in", "log out"),
    # Phrasal verbs whose particle is the whole difference ("turn on" / "turn off"). A "*"
    # word is a stem, and a pronoun may sit between verb and particle ("turn it off").
    ("turn* on", "turn* off"),
    ("switch* on", "switch* off"),
    ("zoom* in", "zoom* out"),
    ("sign* in", "sign* out"),
    ("log* on", "log* off"),
    ("opt* in", "opt* out"),
    ("check* in", "check* out"),
    ("plug* in", "unplug*"),
    ("accept*", "reject*"),
    ("allow*", "deny*"),
    ("push*", "pull*"),
    ("send*", "receiv*"),
    ("lend*", "borrow*"),
    ("north*", "south*"),
    ("east*", "west*"),
    ("profit*", "loss*"),
    ("success*", "failure*"),
    ("strength*", "weakness*"),
    ("rich", "poor"),
    ("easy", "hard"),
    ("easiest", "hardest"),
    ("gain*", "los*"),
    ("legal*", "illegal*"),
    ("possible", "impossible"),
    ("agree*", "disagree*"),
    ("like", "dislike"),
    ("like", "unlike"),
    ("connect*", "disconnect*"),
    ("lock*", "unlock*"),
    ("subscrib*", "unsubscrib*"),
    ("mount*", "unmount*"),
    ("inhal*", "exhal*"),
    ("input*", "output*"),
    ("internal*", "external*"),
    ("inside", "outside"),
    ("young*", "old*"),
    ("first", "last"),
    ("early", "late"),
    ("earliest", "latest"),
    ("long", "short"),
    ("longest", "shortest"),
    ("heavy", "light"),
    ("wet", "dry"),
    ("asleep", "awake"),
    ("husband", "wife"),
    ("father", "mother"),
    ("son", "daughter"),
    ("brother", "sister"),
    ("day", "night"),
    ("summer", "winter"),
    ("private", "public"),
    ("pros", "cons"),
)
_ANTONYMS_PT: tuple[tuple[str, str], ...] = (
    ("ativar", "desativar"),
    ("ativa", "desativa"),
    ("ativado", "desativado"),
    ("ligar", "desligar"),
    ("liga", "desliga"),
    ("ligado", "desligado"),
    ("aument*", "diminu*"),
    ("comprar", "vender"),
    ("compra", "venda"),
    ("antes", "depois"),
    ("máxim*", "mínim*"),
    ("maior*", "menor*"),
    ("melhor*", "pior*"),
    ("entrar", "sair"),
    ("abrir", "fechar"),
    ("subir", "descer"),
    ("ganh*", "perd*"),
    ("começ*", "termin*"),
    ("primeir*", "últim*"),
    ("homem", "mulher"),
    ("homens", "mulheres"),
    ("menino*", "menina*"),
    ("garoto", "garota"),
    ("dentro", "fora"),
    ("acima", "abaixo"),
    ("cheio", "vazio"),
    ("cheia", "vazia"),
    ("grande*", "pequen*"),
    ("alto", "baixo"),
    ("alta", "baixa"),
    ("quente", "frio"),
    ("caro", "barato"),
    ("rápid*", "lent*"),
    ("bom", "mau"),
    ("boa", "má"),
    ("verdadeir*", "fals*"),
    ("esquerd*", "direit*"),
    ("import*", "export*"),
    ("instal*", "desinstal*"),
    ("conect*", "desconect*"),
    ("bloque*", "desbloque*"),
    ("aceit*", "rejeit*"),
    ("permit*", "proib*"),
    ("envi*", "receb*"),
    ("empresta*", "pega*"),
    ("norte", "sul"),
    ("leste", "oeste"),
    ("lucro*", "prejuízo*"),
    ("novo", "velho"),
    ("nova", "velha"),
    ("jovem", "idos*"),
    ("dia", "noite"),
    ("verão", "inverno"),
    ("públic*", "privad*"),
    ("vantage*", "desvantage*"),
    ("cedo", "tarde"),
    ("sobe", "desce"),
    ("pai", "mãe"),
    ("filho", "filha"),
    ("irmão", "irmã"),
    ("marido", "esposa"),
    ("adicion*", "remov*"),
    ("mais", "menos"),
)
_ANTONYMS_ZH: tuple[tuple[str, str], ...] = (
    ("开启", "关闭"),
    ("打开", "关闭"),
    ("开通", "关闭"),
    ("开通", "取消"),
    ("启用", "禁用"),
    ("增加", "减少"),
    ("提高", "降低"),
    ("提升", "降低"),
    ("上调", "下调"),
    ("升高", "降低"),
    ("买", "卖"),
    ("购买", "出售"),
    ("上传", "下载"),
    ("上升", "下降"),
    ("上涨", "下跌"),
    ("上车", "下车"),
    ("上班", "下班"),
    ("上午", "下午"),
    ("以上", "以下"),
    ("上面", "下面"),
    ("上个", "下个"),
    ("上一", "下一"),
    ("上周", "下周"),
    ("上月", "下月"),
    ("上线", "下线"),
    ("之前", "之后"),
    ("以前", "以后"),
    ("前面", "后面"),
    ("最大", "最小"),
    ("最高", "最低"),
    ("最多", "最少"),
    ("最好", "最差"),
    ("多", "少"),
    ("大", "小"),
    ("高", "低"),
    ("长", "短"),
    ("早", "晚"),
    ("左", "右"),
    ("男", "女"),
    ("冷", "热"),
    ("新", "旧"),
    ("快", "慢"),
    ("贵", "便宜"),
    ("借款", "还款"),
    ("借钱", "还钱"),
    ("存款", "取款"),
    ("存钱", "取钱"),
    ("收入", "支出"),
    ("收款", "付款"),
    ("进口", "出口"),
    ("登录", "退出"),
    ("登陆", "退出"),
    ("安装", "卸载"),
    ("加密", "解密"),
    ("锁定", "解锁"),
    ("绑定", "解绑"),
    ("冻结", "解冻"),
    ("赢", "输"),
    ("胖", "瘦"),
    ("真", "假"),
    ("好", "坏"),
    ("优点", "缺点"),
    ("正面", "反面"),
    ("东方", "西方"),
    ("南方", "北方"),
    ("白天", "晚上"),
    ("夏天", "冬天"),
    ("爸爸", "妈妈"),
    ("哥哥", "姐姐"),
    ("儿子", "女儿"),
    ("老公", "老婆"),
)


_LATIN_TERMS = frozenset(t for pair in (*_ANTONYMS_EN, *_ANTONYMS_PT) for t in pair)
_TERM_PHRASES = {
    t: re.compile(
        " "
        + r" (?:(?:it|them|this|that|him|her) )?".join(
            re.escape(w[:-1]) + r"\w*" if w.endswith("*") else re.escape(w) for w in t.split()
        )
        + " "
    )
    for t in _LATIN_TERMS
    if " " in t
}
_TERM_STEMS = frozenset(t[:-1] for t in _LATIN_TERMS if " " not in t and t.endswith("*"))
_TERM_WORDS = frozenset(t for t in _LATIN_TERMS if " " not in t and not t.endswith("*"))


@lru_cache(maxsize=8192)
def _latin_terms(text: str) -> frozenset[str]:
    """The antonym-list terms a text contains, in the lists' spelling ("desativ*" for a word
    starting with that stem, a phrase when its words appear in a row, or with a pronoun
    between a phrasal verb and its particle).

    Found per token (every prefix looked up in the stem set) rather than per term: a
    lookup compares the question with each of its candidates, and the lists hold a few
    hundred terms, so scanning them for every pair cost more than the vector search.
    """
    toks = words(text)
    found: set[str] = set()
    for tok in set(toks):
        if tok in _TERM_WORDS:
            found.add(tok)
        found.update(tok[:i] + "*" for i in range(1, len(tok) + 1) if tok[:i] in _TERM_STEMS)
    padded = f" {' '.join(toks)} "
    found.update(ph for ph, rx in _TERM_PHRASES.items() if rx.search(padded))
    return frozenset(found)


def antonym_pairs(query: str, candidate: str) -> list[tuple[str, str]]:
    """Antonym pairs where one side uses one word and the other side its opposite only."""
    hits: list[tuple[str, str]] = []
    qt, ct = _latin_terms(query), _latin_terms(candidate)
    if qt or ct:
        for x, y in (*_ANTONYMS_EN, *_ANTONYMS_PT):
            qx, qy, cx, cy = x in qt, y in qt, x in ct, y in ct
            # The negative-prefix form ("desativ*") also starts like no positive stem, but
            # "dis/des/un" words do not start with the positive stem, so this test is exact.
            if (qx and not qy and cy and not cx) or (qy and not qx and cx and not cy):
                hits.append((x.replace("*", ""), y.replace("*", "")))
    if has_cjk(query) or has_cjk(candidate):
        qs, cs = normalize(query), normalize(candidate)
        for x, y in _ANTONYMS_ZH:
            qx, qy, cx, cy = x in qs, y in qs, x in cs, y in cs
            if (qx and not qy and cy and not cx) or (qy and not qx and cx and not cy):
                hits.append((x, y))
    return hits


def antonym_guard(query: str, candidate: str) -> str | None:
    """Opposite words on the two sides (enable/disable, 开启/关闭, comprar/vender)."""
    pairs = antonym_pairs(query, candidate)
    if pairs:
        return f"antonyms ({pairs[0][0]} / {pairs[0][1]})"
    return None


# --------------------------------------------------------------------------------------------
# closed classes: units, currencies, language names, weekdays, months, time references
# --------------------------------------------------------------------------------------------
# Words that decide an answer without being a number, a name or a negation: "cups in a
# liter" / "cups in a gallon", "weather today" / "weather tomorrow", "美元" / "欧元". Each
# class lists every value with its spellings in English, Portuguese and Chinese; swapping
# one value for another of the same class changes the answer, so it is a veto like a swapped
# name. The same tables give the ordered-arguments guard one identity per unit ("km",
# "quilômetros" and "公里" are all "km"), so "5 km to miles" and "5 milhas em quilômetros"
# are compared as the same pair of arguments.
#
# Latin single words also match with a plural "s"; ambiguous words are left out on purpose:
# "may"/"march" (verbs), "second" (an ordinal), "real" (the English adjective), "m"/"g"/"l"
# (letters), "won" (a verb), "月" (also part of every Chinese month name).
_CLASS_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "unit": {
        "km": ("km", "kms", "kilometer", "kilometre", "quilômetro", "quilómetro",
               "quilometro", "公里", "千米"),
        "mile": ("mile", "miles", "milha", "milhas", "英里"),
        "m": ("meter", "metre", "metro", "米"),
        "cm": ("cm", "centimeter", "centimetre", "centímetro", "centimetro", "厘米", "公分"),
        "mm": ("mm", "millimeter", "millimetre", "milímetro", "milimetro", "毫米"),
        "inch": ("inch", "inches", "polegada", "英寸"),
        "foot": ("foot", "feet", "ft", "pé", "pés", "英尺"),
        "yard": ("yard", "jarda", "码"),
        "kg": ("kg", "kgs", "kilogram", "kilogramme", "kilo", "quilo", "quilograma",
               "公斤", "千克"),
        "g": ("gram", "gramme", "grama", "克"),
        "lb": ("pound", "lb", "lbs", "libra", "磅"),
        "oz": ("ounce", "oz", "onça", "盎司"),
        "jin": ("斤",),
        "ton": ("ton", "tonne", "tonelada", "吨"),
        "l": ("liter", "litre", "litro", "升"),
        "ml": ("ml", "milliliter", "millilitre", "mililitro", "毫升"),
        "gallon": ("gallon", "galão", "galões", "加仑"),
        "cup": ("cup", "xícara", "xicara", "chávena", "杯"),
        "tablespoon": ("tablespoon", "tbsp", "colher de sopa", "colheres de sopa", "汤匙"),
        "teaspoon": ("teaspoon", "tsp", "colher de chá", "colheres de chá", "茶匙"),
        "celsius": ("celsius", "centigrade", "°c", "摄氏", "摄氏度"),
        "fahrenheit": ("fahrenheit", "°f", "华氏", "华氏度"),
        "kelvin": ("kelvin", "开尔文"),
        "hour": ("hour", "hora", "小时", "钟头"),
        "minute": ("minute", "minuto", "分钟"),
        "second": ("seconds", "segundos", "秒", "秒钟"),
        "day": ("day", "dia", "天"),
        "week": ("week", "semana", "周", "星期"),
        "month": ("month", "mês", "meses", "个月"),
        "year": ("year", "ano", "年"),
        "byte": ("byte", "kb", "mb", "gb", "tb", "kilobyte", "megabyte", "gigabyte",
                 "terabyte", "字节"),
        "acre": ("acre", "hectare", "亩", "公顷"),
    },
    "currency": {
        "usd": ("dollar", "usd", "us$", "dólar", "dólares", "dolar", "dolares", "美元", "美金"),
        "eur": ("euro", "eur", "€", "欧元"),
        "gbp": ("pound", "gbp", "sterling", "libra", "£", "英镑"),
        "brl": ("reais", "brl", "r$", "雷亚尔"),
        "cny": ("yuan", "rmb", "cny", "renminbi", "人民币", "元"),
        "jpy": ("yen", "jpy", "iene", "ienes", "日元", "日币"),
        "krw": ("krw", "韩元"),
        "inr": ("rupee", "inr", "rúpia", "卢比"),
        "hkd": ("hkd", "港币", "港元"),
        "btc": ("bitcoin", "btc", "比特币"),
    },
    "language name": {
        "english": ("english", "inglês", "ingles", "英语", "英文"),
        "portuguese": ("portuguese", "português", "portugues", "葡萄牙语", "葡语"),
        "chinese": ("chinese", "mandarin", "chinês", "chines", "mandarim", "中文", "汉语",
                    "普通话"),
        "spanish": ("spanish", "espanhol", "西班牙语"),
        "french": ("french", "francês", "frances", "法语", "法文"),
        "german": ("german", "alemão", "alemao", "德语", "德文"),
        "japanese": ("japanese", "japonês", "japones", "日语", "日文"),
        "korean": ("korean", "coreano", "韩语", "韩文"),
        "italian": ("italian", "italiano", "意大利语"),
        "russian": ("russian", "russo", "俄语"),
        "arabic": ("arabic", "árabe", "arabe", "阿拉伯语"),
        "hindi": ("hindi", "印地语"),
    },
    "weekday": {
        "mon": ("monday", "segunda", "segunda-feira", "周一", "星期一", "礼拜一"),
        "tue": ("tuesday", "terça", "terca", "terça-feira", "周二", "星期二", "礼拜二"),
        "wed": ("wednesday", "quarta", "quarta-feira", "周三", "星期三", "礼拜三"),
        "thu": ("thursday", "quinta", "quinta-feira", "周四", "星期四", "礼拜四"),
        "fri": ("friday", "sexta", "sexta-feira", "周五", "星期五", "礼拜五"),
        "sat": ("saturday", "sábado", "sabado", "周六", "星期六", "礼拜六"),
        "sun": ("sunday", "domingo", "周日", "周天", "星期日", "星期天", "礼拜日", "礼拜天"),
    },
    "month": {
        "jan": ("january", "janeiro"),
        "feb": ("february", "fevereiro"),
        "mar": ("março",),
        "apr": ("april", "abril"),
        "may": ("maio",),
        "jun": ("june", "junho"),
        "jul": ("july", "julho"),
        "aug": ("august", "agosto"),
        "sep": ("september", "setembro"),
        "oct": ("october", "outubro"),
        "nov": ("november", "novembro"),
        "dec": ("december", "dezembro"),
    },
    "time reference": {
        "today": ("today", "tonight", "this morning", "this afternoon", "this evening",
                  "hoje", "hoje à noite", "esta noite", "nesta noite", "今天", "今日", "今晚",
                  "今早", "今天晚上"),
        "tomorrow": ("tomorrow", "tomorrow night", "tomorrow morning", "amanhã", "amanha",
                     "明天", "明日", "明晚", "明早", "明天晚上"),
        "yesterday": ("yesterday", "last night", "ontem", "昨天", "昨日", "昨晚"),
        "after tomorrow": ("day after tomorrow", "depois de amanhã", "后天"),
        "before yesterday": ("day before yesterday", "anteontem", "前天"),
        "this week": ("this week", "esta semana", "nesta semana", "essa semana",
                      "nessa semana", "这周", "本周", "这个星期", "这星期", "这个礼拜"),
        "next week": ("next week", "próxima semana", "proxima semana", "semana que vem",
                      "下周", "下个星期", "下星期", "下个礼拜", "下礼拜"),
        "last week": ("last week", "semana passada", "上周", "上个星期", "上星期",
                      "上个礼拜", "上礼拜"),
        "this weekend": ("this weekend", "este fim de semana", "neste fim de semana",
                         "esse fim de semana", "nesse fim de semana", "这周末", "这个周末",
                         "本周末"),
        "next weekend": ("next weekend", "próximo fim de semana", "proximo fim de semana",
                         "fim de semana que vem", "下周末", "下个周末"),
        "last weekend": ("last weekend", "fim de semana passado", "上周末", "上个周末"),
        "this month": ("this month", "este mês", "neste mês", "esse mês", "nesse mês",
                       "这个月", "本月"),
        "next month": ("next month", "próximo mês", "proximo mes", "mês que vem", "下个月",
                       "下月"),
        "last month": ("last month", "mês passado", "上个月", "上月"),
        "this year": ("this year", "este ano", "neste ano", "esse ano", "nesse ano", "今年",
                      "本年"),
        "next year": ("next year", "próximo ano", "proximo ano", "ano que vem", "明年"),
        "last year": ("last year", "ano passado", "去年"),
    },
}
_CLASS_LABELS = {
    "unit": "units",
    "currency": "currencies",
    "language name": "language names",
    "weekday": "weekdays",
    "month": "months",
    "time reference": "time references",
}

ClassTerm = tuple[str, str]  # (class, value)


def _class_tables() -> tuple[
    dict[str, set[ClassTerm]], dict[tuple[str, ...], set[ClassTerm]], dict[str, set[ClassTerm]]
]:
    """Latin single words (with plurals), Latin phrases (by words) and Chinese terms."""
    single: dict[str, set[ClassTerm]] = {}
    phrases: dict[tuple[str, ...], set[ClassTerm]] = {}
    zh: dict[str, set[ClassTerm]] = {}
    for cls, values in _CLASS_VALUES.items():
        for value, forms in values.items():
            for form in forms:
                if _CJK.search(form):
                    zh.setdefault(form, set()).add((cls, value))
                elif " " in form or "-" in form:
                    key = tuple(words(form))
                    phrases.setdefault(key, set()).add((cls, value))
                else:
                    variants = {form}
                    if form[-1].isalpha() and not form.endswith("s"):
                        variants |= {form + "s", form + "es"} if form.endswith("h") else {
                            form + "s"}
                    for v in variants:
                        single.setdefault(v, set()).add((cls, value))
    return single, phrases, zh


_CLASS_SINGLE, _CLASS_PHRASES, _CLASS_ZH = _class_tables()
_CLASS_PHRASE_MAX = max(len(k) for k in _CLASS_PHRASES)
_CLASS_ZH_LONG = sorted((t for t in _CLASS_ZH if len(t) > 1), key=len, reverse=True)
_ZH_TERM_CHARS = frozenset("".join(_CLASS_ZH))
_ZH_QUANTITY_PREFIX = re.compile(r"^(?:[\d零〇一二两三四五六七八九十百千万亿几每]+|多少|半)$")
# Symbols glued to numbers ("R$ 50", "30°C") that ``words`` drops.
_CLASS_SYMBOLS = (
    (re.compile(r"R\$"), ("currency", "brl")),
    (re.compile(r"(?<![A-Za-z])(?:US)?\$"), ("currency", "usd")),
    (re.compile(r"€"), ("currency", "eur")),
    (re.compile(r"£"), ("currency", "gbp")),
    (re.compile(r"[°º]\s*C\b", re.IGNORECASE), ("unit", "celsius")),
    (re.compile(r"[°º]\s*F\b", re.IGNORECASE), ("unit", "fahrenheit")),
)


@lru_cache(maxsize=16384)
def _zh_class_split(token: str) -> tuple[tuple[str, frozenset[ClassTerm]], ...]:
    """A jieba token cut around the closed-class terms inside it: jieba glues some to a
    neighbour ("一英里", "英文翻译", "美元兑"). A one-character term ("米", "元", "天") counts
    only as a whole token or after a numeral ("几斤", "3天"): inside a word it is usually
    another word's character ("小米", "密码", "天气"). Cached: tokens repeat across
    questions, and most share no character with any term at all."""
    if token in _CLASS_ZH:
        return ((token, frozenset(_CLASS_ZH[token])),)
    if _ZH_TERM_CHARS.isdisjoint(token):
        return ((token, frozenset()),)
    for term in _CLASS_ZH_LONG:
        k = token.find(term)
        if k >= 0:
            end = k + len(term)
            return (*(_zh_class_split(token[:k]) if k else ()),
                    (term, frozenset(_CLASS_ZH[term])),
                    *(_zh_class_split(token[end:]) if end < len(token) else ()))
    last = token[-1]
    if len(token) > 1 and last in _CLASS_ZH and _ZH_QUANTITY_PREFIX.match(token[:-1]):
        return ((token[:-1], frozenset()), (last, frozenset(_CLASS_ZH[last])))
    return ((token, frozenset()),)


@lru_cache(maxsize=8192)
def class_terms(text: str) -> frozenset[ClassTerm]:
    """The closed-class values a text names: ``{("unit", "km"), ("time reference", "today")}``.

    Longest spelling first, so "day after tomorrow" is one value and not also "tomorrow",
    and "neste fim de semana" is "this weekend" and not also a "week" unit.
    """
    t = normalize(text)
    found: set[ClassTerm] = set()
    for rx, term in _CLASS_SYMBOLS:
        if rx.search(t):
            found.add(term)
    toks = words(t)
    i = 0
    while i < len(toks):
        for n in range(min(_CLASS_PHRASE_MAX, len(toks) - i), 1, -1):
            terms = _CLASS_PHRASES.get(tuple(toks[i : i + n]))
            if terms:
                found |= terms
                i += n
                break
        else:
            found |= _CLASS_SINGLE.get(toks[i], set())
            i += 1
    if has_cjk(t):
        found |= _zh_class_terms(t)
    return frozenset(found)


def _zh_class_terms(t: str) -> set[ClassTerm]:
    """Chinese closed-class terms, longest first over the whole text (jieba splits "这周末"
    into "这" + "周末"), kept only where a term starts or ends on a jieba word boundary: a
    term straddling two words is a coincidence of characters ("聪明天才" holds "明天")."""
    spans: list[tuple[int, int, str]] = []
    pos = 0
    for w, _tag in cjk_tagged(t):
        k = t.find(w, pos)
        if k >= 0:
            spans.append((k, k + len(w), w))
            pos = k + len(w)
    bounds = {0} | {k for k, _, _ in spans} | {e for _, e, _ in spans}
    found: set[ClassTerm] = set()
    taken = [False] * len(t)
    for term in _CLASS_ZH_LONG:
        k = t.find(term)
        while k >= 0:
            end = k + len(term)
            if (k in bounds or end in bounds) and not any(taken[k:end]):
                found |= _CLASS_ZH[term]
                taken[k:end] = [True] * len(term)
            k = t.find(term, k + 1)
    # One-character terms: whole words, or after a numeral ("几斤"), outside the above.
    for k, end, w in spans:
        if not any(taken[k:end]) and w[-1] in _CLASS_ZH:
            for _part, terms in _zh_class_split(w):
                found |= terms
    return found


def class_guard(query: str, candidate: str) -> str | None:
    """One unit, currency, language, weekday, month or time reference swapped for another
    of its kind ("cups in a liter" / "cups in a gallon", "hoje" / "amanhã", "美元" / "欧元").

    Like the entity guard, only a substitution fires (each side names a value of the class
    the other does not); a value named on one side only is common in paraphrases ("how long
    to boil an egg" / "how many minutes to boil an egg") and is left to the verifier.
    """
    qt, ct = class_terms(query), class_terms(candidate)
    if qt == ct:
        return None
    for cls in _CLASS_VALUES:
        only_q = sorted(v for c, v in qt - ct if c == cls)
        only_c = sorted(v for c, v in ct - qt if c == cls)
        if only_q and only_c:
            return f"{_CLASS_LABELS[cls]} differ ({only_q[0]} vs {only_c[0]})"
    return None


# --------------------------------------------------------------------------------------------
# ordered arguments
# --------------------------------------------------------------------------------------------
# "Convert 5 km to miles" and "Convert 5 miles to km" share every word and every number, and
# embeddings barely see the order. Around an asymmetric connective (to, from…to, minus,
# divided by, than, before/after; para, de…para, em, menos, dividido por, que after a
# comparative; 到, 从…到, 换成, 减, 除以, 比) each text names an ordered pair of arguments
# (source, target); when the other text names the same two arguments in the opposite order
# and never in this one, the question is another question. Symmetric connectives (and, or,
# vs, e, ou, x, 和, 与, 还是) name no order and only end an argument.
#
# An argument is up to three content words next to the connective, inside its clause and
# stopped by the next connective or a "from" marker (from, de/do/da, 从, 把), so a multi-word
# name ("New York", "Estados Unidos") is one argument. Units, currencies and language names
# take their closed-class value and numbers their canonical value, so the two texts may
# spell them differently ("5 km" / "cinco quilômetros").
_ARG_WINDOW = 3
_BOUNDARY_WORDS = frozenset(
    "and or nor vs versus x & but if when while because e ou nem mas se quando enquanto "
    "porque 和 与 跟 或 或者 还是 及 以及 并且 但是 如果 因为 同 对比".split()
)
_PUNCT = frozenset(".,;:!?()[]{}\"“”«»'`。，；：！？、（）【】「」『』…")
# Words that connect arguments in every use: "X to Y" is (X, Y).
_CONN_FORWARD = frozenset(
    "to into -> => → minus than before after "
    "para pra menos antes depois até "
    "到 至 往 去 飞 转 换成 转成 转换成 兑换成 换算成 翻译成 译成 折合 成 兑 "
    "减 减去 除以 比".split()
)
# Connectives only between numbers ("10 / 2", "10 - 2", "3 over 4").
_CONN_NUMERIC = frozenset("over / ÷ - − –".split())
# Connectives only between units, currencies or language names ("5 km in miles",
# "100 reais em dólares"); everywhere else "in"/"em" is a place or a topic.
_CONN_CLOSED = frozenset("in em".split())
# Chinese motion verbs connect two places ("北京到上海", "北京飞上海") only when both sit right
# next to them and neither is a verb: "买到" / "弄到衣服上" are results, "去哪里买" a question.
_CONN_ZH_MOTION = frozenset("到 至 往 去 飞".split())
# Portuguese "a"/"ao"/"à" connect only inside "de X a Y"; elsewhere they are articles.
_CONN_FROM_FRAME = frozenset("a ao à aos às".split())
# "How many miles is 5 km", "quantos metros tem uma milha": the quantity word names the
# target, so these read backwards — (5 km, miles).
_CONN_QUANTITY = frozenset(
    "is are make makes equal equals in tem têm há cabem equivale equivalem são é em".split()
)
_QUANTITY_WORDS = frozenset("many quantos quantas".split())
# Chinese conversion verbs that connect only when a quantity word follows ("1公斤等于多少磅").
_CONN_ZH_QUANTITY = frozenset("是 有 等于 合 相当于".split())
_ZH_QUANTITY = frozenset("多少 几".split())
_COMPARATIVES = frozenset(
    "mais menos maior maiores menor menores melhor melhores pior piores superior inferior".split()
)
_TWO_WORD_CONN = {
    ("divided", "by"): "divided by",
    ("dividido", "por"): "dividido por",
    ("dividida", "por"): "dividido por",
    ("divididos", "por"): "dividido por",
    ("elevado", "a"): "elevado a",
    ("do", "que"): "do que",  # "maior do que": "do" is not a "from" marker here
    ("raised", "to"): "to",
}
_FROM_MARKERS = frozenset("from de do da dos das desde 从 把 由 自".split())
# Relations that hold both ways: "how is X different from Y" is "how is Y different from X".
_SYMMETRIC = frozenset(
    "different differ differs differed difference differences compare compared comparison "
    "similar same distinguish diferente diferentes diferença diferenças diferem difere "
    "comparar comparado comparada comparação semelhante parecido parecida igual "
    "区别 不同 差别 相比 比较 一样".split()
)
# Connective words of one language only: in an English question "do", "a", "para" are not
# Portuguese markers ("How do I delete a question"), and in a Portuguese one "to" is not.
_PT_ONLY = frozenset(
    "para pra menos antes depois até a ao à aos às em que tem têm há cabem equivale "
    "equivalem são é de do da dos das desde dividido dividida divididos elevado quantos "
    "quantas".split()
)
_EN_ONLY = frozenset(
    "to into minus than before after over in from is are make makes equal equals divided "
    "raised many".split()
)
_TO_FAMILY = frozenset("to into till until through -> → para pra até a ao à 到 至".split())
# Verbs that frame a conversion or a trip without being one of its arguments.
_ARG_STOP = frozenset(
    "many much quantos quantas quanto quanta please convert converter converting "
    "conversion translate translating traduzir traduza traduz tradução go going get ir "
    "vou travel viajar fly voar say dizer diz calculate calcular calcule "
    "多少 几 怎么 怎样 怎么样 什么 如何 请问 哪里 哪个 翻译 兑换 转换 换算 折算 想 要 我 你 "
    "他 她 它 我们 的 了 吗 呢 吧 啊 是 有 在 会 能 可以 需要 一下".split()
)
_ORD_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)*|->|=>|[→/÷\-−–&]|[^\w\s]"
)


_ANY_CONN = (_CONN_FORWARD | _CONN_NUMERIC | _CONN_CLOSED | _CONN_FROM_FRAME | _CONN_QUANTITY
             | _CONN_ZH_QUANTITY | _CONN_ZH_MOTION | {"que", "from"})


@dataclass(frozen=True, slots=True)
class _Tok:
    text: str  # lower-cased surface
    arg: str  # identity as an argument: number value, closed-class value, or the word
    content: bool  # may be (part of) an argument
    number: bool
    closed: bool  # a unit, currency or language name
    verb: bool = False  # jieba tags it a verb (Chinese only)


_ARG_CLASSES = ("unit", "currency", "language name")  # closed classes that are arguments
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")


@lru_cache(maxsize=65536)
def _latin_arg(word: str) -> _Tok:
    """One Latin word as an argument candidate (cached: questions share most words)."""
    if _DIGITS.fullmatch(word):
        return _Tok(word, _latin_number(word, None), True, True, False)
    if word in _EN_NUM or word in _PT_NUM:
        return _Tok(word, str(_EN_NUM.get(word, _PT_NUM.get(word))), True, True, False)
    # "pound" is a unit and a currency: one identity for both, the unit's ("lb").
    terms = sorted((_ARG_CLASSES.index(c), v) for c, v in _CLASS_SINGLE.get(word, ())
                   if c in _ARG_CLASSES)
    if terms:
        return _Tok(word, terms[0][1], True, False, True)
    base = word.split("'")[0]
    stop = (base in _EN_STOP or base in _PT_STOP or base in _ARG_STOP or not word[0].isalnum()
            or word in _BOUNDARY_WORDS)
    arg = word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
    return _Tok(word, arg, not stop, False, False)


def _zh_arg(part: str, terms: frozenset[ClassTerm]) -> _Tok:
    if _DIGITS.fullmatch(part):
        return _Tok(part, _latin_number(part, None), True, True, False)
    if _CJK.search(part) is None:
        return _latin_arg(part.lower())
    values = sorted((_ARG_CLASSES.index(c), v) for c, v in terms if c in _ARG_CLASSES)
    if values:
        return _Tok(part, values[0][1], True, False, True)
    if re.fullmatch(r"第?[零〇一二两三四五六七八九十百千万亿]+", part):
        value = _zh_value(part)
        if value is not None:
            return _Tok(part, value, True, True, False)
    stop = (part in _ARG_STOP or part in _FROM_MARKERS
            or all(ch in _ZH_FUNCTION for ch in part))
    return _Tok(part, part, not stop, False, False)


def _arg_tokens(text: str) -> list[_Tok]:
    t = normalize(text).lower()
    if not has_cjk(t):
        lang = detect_language(t)
        foreign = _PT_ONLY if lang == "en" else _EN_ONLY if lang == "pt" else frozenset()
        toks = [_latin_arg(w.replace("’", "'")) for w in _ORD_TOKEN.findall(t)]
        # The other language's connectives become plain (stop) words: "#" matches no table.
        return [_Tok("#" + k.text, k.arg, False, False, False) if k.text in foreign else k
                for k in toks]
    out: list[_Tok] = []
    # Tagged in its original case: the same jieba call (and cache entry) as ``entities``.
    for word, tag in cjk_tagged(normalize(text)):
        word = word.lower()
        verb = tag.startswith("v")
        if verb and len(word) > 1 and word[-1] == "到" and word not in _CONN_FORWARD:
            # jieba glues the direction to its verb ("传到", "寄到"): keep them apart, so
            # "从电脑传到手机" still reads 电脑 → 手机.
            out += [_Tok(word[:-1], word[:-1], True, False, False, verb=True),
                    _zh_arg("到", frozenset())]
            continue
        for part, terms in _zh_class_split(word):
            tok = _zh_arg(part, terms)
            out.append(dataclasses.replace(tok, verb=verb and part == word))
    return out


def _boundary(tok: _Tok) -> bool:
    return tok.text in _PUNCT or tok.text in _BOUNDARY_WORDS


def _stops_window(tok: _Tok) -> bool:
    return (_boundary(tok) or tok.text in _CONN_FORWARD or tok.text in _CONN_NUMERIC
            or tok.text in _CONN_CLOSED or tok.text in ("que", "from", "por", "by"))


def _window(toks: list[_Tok], start: int, step: int) -> list[int]:
    """Indices of up to ``_ARG_WINDOW`` content tokens from ``start`` in direction ``step``,
    inside the clause and before the next connective. A "from" marker ends a left window
    (it opens the argument) and a right one once it holds a word ("para o Porto de
    comboio"), not before ("antes de comer")."""
    out: list[int] = []
    j = start
    while 0 <= j < len(toks) and len(out) < _ARG_WINDOW:
        tok = toks[j]
        if _stops_window(tok) or (tok.text in _FROM_MARKERS and (step < 0 or out)):
            break
        if tok.content:
            out.append(j)
        j += step
    return out


def _in_from_frame(toks: list[_Tok], i: int) -> bool:
    """Whether a "from" marker opens the stretch left of ``i`` ("de Lisboa ao Porto")."""
    j, seen = i - 1, 0
    while j >= 0 and seen <= _ARG_WINDOW:
        tok = toks[j]
        if tok.text in _FROM_MARKERS:
            return seen > 0
        if _stops_window(tok):
            return False
        seen += tok.content
        j -= 1
    return False


def _reaches_to(toks: list[_Tok], i: int) -> bool:
    """Whether a "from" at ``i`` is the start of "from X to Y" (then "to" reads it)."""
    for tok in toks[i + 1 :]:
        if tok.text in _TO_FAMILY:
            return True
        if _boundary(tok):
            return False
    return False


def _quantity_before(toks: list[_Tok], left: list[int]) -> bool:
    """Whether the left argument follows "how many"/"quantos" directly."""
    first = min(left)
    return first > 0 and toks[first - 1].text in _QUANTITY_WORDS


@lru_cache(maxsize=8192)
def ordered_pairs(text: str) -> frozenset[tuple[str, str]]:
    """The (source, target) argument pairs a text orders: "Convert 5 km to miles" gives
    ``{("5", "mile"), ("km", "mile")}``; "Python vs Java" gives none."""
    toks = _arg_tokens(text)
    pairs: set[tuple[str, str]] = set()
    i = 0
    while i < len(toks):
        w = toks[i].text
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        span = 1
        if (w, nxt) in _TWO_WORD_CONN:
            span = 2
        elif w not in _ANY_CONN:
            i += 1
            continue
        left = _window(toks, i - 1, -1)
        right = _window(toks, i + span, 1)
        reverse = False
        if not left or not right:
            i += span
            continue
        near_l, near_r = toks[left[0]], toks[right[0]]
        if w in _CONN_ZH_MOTION:
            # Inside "从 X … 到 Y" a verb may sit before 到 ("从电脑传到手机").
            connects = (left[0] == i - 1 and right[0] == i + 1 and not near_l.verb
                        and not near_r.verb) or (w in _TO_FAMILY and _in_from_frame(toks, i))
        elif span == 2 or w in _CONN_FORWARD:
            connects = True
        elif w in _CONN_QUANTITY and _quantity_before(toks, left):
            connects = reverse = True
        elif w in _CONN_CLOSED:
            connects = near_l.closed and near_r.closed
        elif w in _CONN_NUMERIC:
            connects = (left[0] == i - 1 and right[0] == i + 1 and near_l.number
                        and near_r.number)
        elif w in _CONN_FROM_FRAME:
            connects = _in_from_frame(toks, i)
        elif w == "que":
            before = {t.text for t in toks[max(0, i - _ARG_WINDOW) : i]}
            connects = (i > 0 and toks[i - 1].text == "do") or bool(before & _COMPARATIVES)
        elif w == "from":
            # "subtract 3 from 10" orders its arguments; "delete a question from Quora"
            # names a source, not an order, so only numbers and units count here.
            connects = reverse = not _reaches_to(toks, i) and (
                (near_l.number or near_l.closed) and (near_r.number or near_r.closed))
        elif w in _CONN_ZH_QUANTITY:
            connects = any(t.text in _ZH_QUANTITY for t in toks[i + 1 : i + 3])
        else:
            connects = False
        if connects and any(t.text in _SYMMETRIC for t in toks[max(0, min(left) - 1) : i]):
            connects = False  # "X is different from Y": no order
        if connects:
            src, dst = (right, left) if reverse else (left, right)
            pairs.update((toks[a].arg, toks[b].arg) for a in src for b in dst
                         if toks[a].arg != toks[b].arg)
        i += span
    return frozenset(pairs)


def ordered_arguments_guard(query: str, candidate: str) -> str | None:
    """The same two arguments in the opposite order ("5 km to miles" / "5 miles to km",
    "de Lisboa para o Porto" / "do Porto para Lisboa", "10减3" / "3减10").

    Fires only when one text orders (a, b), the other (b, a), and neither also names the
    first order, so a text that mentions both directions ("from A to B and back from B to
    A") never fires, and neither does a symmetric "A vs B" / "B vs A".
    """
    pq, pc = ordered_pairs(query), ordered_pairs(candidate)
    if not pq or not pc:
        return None
    for a, b in sorted(pq):
        if (b, a) in pc and (a, b) not in pc and (b, a) not in pq:
            return f"arguments in the opposite order ({a} → {b} vs {b} → {a})"
    return None


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
GUARDS: tuple[Guard, ...] = (
    language_guard,
    number_guard,
    entity_guard,
    negation_guard,
    antonym_guard,
    ordered_arguments_guard,
    class_guard,
)


def run_guards(query: str, candidate: str, guards: tuple[Guard, ...] = GUARDS) -> GuardResult:
    """First veto wins; identical texts (after normalisation) always pass."""
    if normalize(query).casefold() == normalize(candidate).casefold():
        return GuardResult(True)
    for guard in guards:
        reason = guard(query, candidate)
        if reason is not None:
            return GuardResult(False, reason)
    return GuardResult(True)
