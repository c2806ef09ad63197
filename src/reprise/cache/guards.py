"""Rule guards: cheap, explainable vetoes on a semantic-cache candidate.

Embeddings put "capital of France" and "capital of Germany" close together because they
share everything but the one word that decides the answer. A wrong cached answer is worse
than a miss, so before a candidate is served these rules look for the differences that
embeddings blur: numbers, named entities, negation, antonyms and the answer's language.

Each guard is ``(query, candidate) -> reason | None``. They are deliberately asymmetric-safe
(swapping the two texts gives the same verdict) and tuned for precision: a guard fires only
on a difference that changes the answer in the tuning data (QQP 40k, LCQMC dev, BQ dev,
ASSIN 2 dev), and softer signals are left to the learned verifier as features.

Portuguese, Chinese and English are covered; other languages fall through the word lists
and are judged by the embedder and the verifier alone.
"""

from __future__ import annotations

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


def _mentions(text_lower: str, entity: str) -> bool:
    if _CJK.search(entity):
        return entity in text_lower
    # Allow plural/possessive endings: "Germany's", "Americans".
    return (
        re.search(r"(?<![\w])" + re.escape(entity[: max(3, len(entity) - 2)]), text_lower)
        is not None
    )


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
_TERM_PHRASES = frozenset(t for t in _LATIN_TERMS if " " in t)
_TERM_STEMS = frozenset(t[:-1] for t in _LATIN_TERMS if " " not in t and t.endswith("*"))
_TERM_WORDS = frozenset(t for t in _LATIN_TERMS if " " not in t and not t.endswith("*"))


@lru_cache(maxsize=8192)
def _latin_terms(text: str) -> frozenset[str]:
    """The antonym-list terms a text contains, in the lists' spelling ("desativ*" for a word
    starting with that stem, a phrase when its words appear in a row).

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
    found.update(ph for ph in _TERM_PHRASES if f" {ph} " in padded)
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
                hits.append((x.rstrip("*"), y.rstrip("*")))
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
# the pipeline
# --------------------------------------------------------------------------------------------
GUARDS: tuple[Guard, ...] = (
    language_guard,
    number_guard,
    entity_guard,
    negation_guard,
    antonym_guard,
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
