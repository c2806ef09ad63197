"""Rule guards: each veto on its own cases in English, Portuguese and Chinese."""

from __future__ import annotations

import pytest

from reprise.cache.guards import (
    GuardResult,
    antonym_guard,
    class_guard,
    class_terms,
    detect_language,
    entity_guard,
    language_guard,
    negation_guard,
    number_guard,
    numbers,
    ordered_arguments_guard,
    ordered_pairs,
    run_guards,
)

REJECT = [
    ("What is the capital of France?", "What is the capital of Germany?", "entities"),
    ("capital of France", "capital of Germany", "entities"),
    ("how to enable dark mode", "how to disable dark mode", "antonyms"),
    ("开启蓝牙", "关闭蓝牙", "antonyms"),
    ("iPhone 14 price", "iPhone 15 price", "numbers"),
    ("北京今天天气怎么样", "上海今天天气怎么样", "entities"),
    ("Qual é a capital da França?", "Qual é a capital da Alemanha?", "entities"),
    ("como aumentar o volume do celular", "como diminuir o volume do celular", "antonyms"),
    ("onde comprar um carro usado", "onde vender um carro usado", "antonyms"),
    ("how to increase my credit limit", "how to decrease my credit limit", "antonyms"),
    ("如何增加信用额度", "如何减少信用额度", "antonyms"),
    ("Why is Python slow?", "Why is Python not slow?", "negation"),
    ("Posso tomar café grávida?", "Não posso tomar café grávida?", "negation"),
    ("这个软件能用", "这个软件不能用", "negation"),
    ("best laptops of 2019", "best laptops of 2020", "numbers"),
    ("top 10 movies", "top ten movies of all time 20", "numbers"),
    ("第二次世界大战", "第一次世界大战", "numbers"),
    ("What is a distributed system?", "O que é um sistema distribuído?", "language"),
    ("What is a distributed system?", "什么是分布式系统？", "language"),
    ("Convert 5 km to miles", "Convert 5 miles to km", "opposite order"),
    ("从北京到上海", "从上海到北京", "opposite order"),
    ("How many cups are in a liter?", "How many cups are in a gallon?", "units"),
    ("Vai chover hoje?", "Vai chover amanhã?", "time references"),
    ("How do I turn on dark mode?", "How do I turn off dark mode?", "antonyms"),
]

ACCEPT = [
    ("O que são sistemas distribuídos?", "Explique sistemas distribuídos"),
    ("How do I learn Python?", "What is the best way to learn Python?"),
    ("怎么学习英语", "如何学好英语"),
    ("Is it true that cats sleep a lot?", "Do cats sleep a lot?"),
    ("O gato está no sofá", "O gato está sentado no sofá"),  # "no" = "in the" in Portuguese
    ("这个是不是真的", "这个是真的吗"),  # A-not-A is a yes/no question, not a negation
    ("I have two cats", "I have 2 cats"),
    ("Eu tenho dois gatos", "Eu tenho 2 gatos"),
    ("我有两只猫", "我有2只猫"),
    ("weight 1,5 kg", "weight 1.5 kg"),
    ("population 1,000,000", "population 1000000"),
    ("What is the 3rd planet?", "Which is the third planet?"),
]


@pytest.mark.parametrize(("query", "candidate", "word"), REJECT)
def test_rejects_answer_changing_differences(query: str, candidate: str, word: str) -> None:
    result = run_guards(query, candidate)
    assert not result.ok
    assert result.reason is not None and word.removesuffix("s") in result.reason
    # Symmetric: the stored and the asked question can swap roles.
    assert not run_guards(candidate, query).ok


@pytest.mark.parametrize(("query", "candidate"), ACCEPT)
def test_accepts_paraphrases(query: str, candidate: str) -> None:
    assert run_guards(query, candidate) == GuardResult(True, None)


def test_identical_text_always_passes() -> None:
    assert run_guards("Is it not 2 o'clock?", "is it not 2 o'clock?").ok


def test_numbers_are_canonical_across_languages() -> None:
    assert numbers("two") == numbers("2") == numbers("dois") == numbers("二") == {"2"}
    assert numbers("两个") == {"2"}
    assert numbers("1,5") == numbers("1.5") == {"1.5"}
    assert numbers("2nd") == numbers("second") == numbers("第二") == {"#2"}
    assert numbers("15k") == {"15000"}
    # Articles and set phrases are not quantities.
    assert numbers("um carro") == numbers("一下") == numbers("which one") == frozenset()


def test_each_guard_is_importable_and_specific() -> None:
    assert number_guard("iPhone 14", "iPhone 15") is not None
    assert number_guard("iPhone price", "iPhone 15 price") is not None
    assert number_guard("iPhone 15", "iPhone fifteen") is None
    assert entity_guard("capital of France", "capital of Germany") is not None
    assert entity_guard("learn Python", "learn Python programming at MIT") is None
    assert negation_guard("I can swim", "I can't swim") is not None
    assert negation_guard("有没有优惠", "有优惠吗") is None
    assert antonym_guard("comprar ações", "vender ações") is not None
    assert antonym_guard("buy and sell stocks", "sell stocks") is None
    assert language_guard("iPhone 15", "iPhone 15 preço") is None  # too little evidence


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("What is the best way to learn?", "en"),
        ("Qual é a melhor forma de aprender?", "pt"),
        ("学习的最好方法是什么", "zh"),
        ("iPhone 15", ""),
        ("", ""),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


# --- each guard on its own cases (called directly, so a case cannot pass through another guard)
GUARD_CASES = {
    number_guard: (
        [("Python 3.11 release date", "Python 3.12 release date"),
         ("Quanto custa 3 kg de arroz?", "Quanto custa 5 kg de arroz?"),
         ("2019年的GDP", "2020年的GDP"),
         ("第三季度财报", "第四季度财报")],
        [("I have two cats", "I have 2 cats"),
         ("Tenho vinte anos", "Tenho 20 anos"),
         ("我有两只猫", "我有2只猫"),
         ("How do I cancel my subscription?", "How can I cancel my subscription?")],
    ),
    entity_guard: (
        [("Who founded Microsoft?", "Who founded Apple?"),
         ("Quem escreveu Dom Casmurro?", "Quem escreveu Memórias Póstumas?"),
         ("马云创办了哪家公司", "马化腾创办了哪家公司"),
         ("如何在深圳办理护照", "如何在广州办理护照"),
         ("What is the capital of Australia?", "What is the capital of Austria?")],
        [("How do I cancel my Netflix subscription?", "How can I cancel my Netflix subscription?"),
         ("Como cancelar a assinatura da Netflix?", "Como faço para cancelar a Netflix?"),
         ("北京有什么好吃的", "在北京吃什么好"),
         ("learn Python", "how to learn python"),
         ("Why do Americans love baseball?", "Why does America love baseball?"),
         ("Is the UN still relevant?", "Is the United Nations still relevant?"),
         ("Screenshot on a Mac", "Screenshot on a MacBook"),
         ("QQ邮箱怎么注册", "怎么注册一个QQ邮箱")],
    ),
    negation_guard: (
        [("Is coffee bad for you?", "Is coffee not bad for you?"),
         ("Eu gosto de café", "Eu não gosto de café"),
         ("我喜欢咖啡", "我不喜欢咖啡"),
         ("为什么没有信号", "为什么有信号")],
        [("Why can't I log in?", "Why am I unable to log in? It does not work"),  # not + n't
         ("O carro está no estacionamento?", "O carro fica no estacionamento?"),
         ("这个是不是真的", "这个是真的吗"),
         ("这家餐厅怎么样", "这家餐厅不错吧")],
    ),
    antonym_guard: (
        [("How do I enable notifications?", "How do I disable notifications?"),
         ("Como ativar o Bluetooth?", "Como desativar o Bluetooth?"),
         ("怎么开启蓝牙", "怎么关闭蓝牙"),
         ("Como ligar o computador?", "Como desligar o computador?"),
         ("如何上传文件", "如何下载文件")],
        [("How do I enable notifications?", "How do I turn on notifications?"),
         ("Como ativar o Bluetooth?", "Como ligar o Bluetooth? Como ativar?"),
         ("怎么开启蓝牙", "如何打开蓝牙"),
         ("buy or sell a house", "sell or buy a house")],
    ),
    ordered_arguments_guard: (
        [("Convert 5 km to miles", "Convert 5 miles to km"),
         ("How do I get from Lisbon to Porto?", "How do I get from Porto to Lisbon?"),
         ("5 quilômetros em milhas", "5 milhas em quilômetros"),
         ("10 dividido por 2", "2 dividido por 10"),
         ("从北京到上海", "从上海到北京"),
         ("10减3等于几", "3减10等于几")],
        [("Python vs Java", "Java vs Python"),
         ("Convert 5 km to miles", "How many miles is 5 km?"),
         ("从北京到上海怎么走？", "北京到上海怎么去？"),
         ("How is Quora different from Wikipedia?", "How is Wikipedia different from Quora?")],
    ),
    class_guard: (
        [("How many cups are in a liter?", "How many cups are in a gallon?"),
         ("Quanto é 50 euros em reais?", "Quanto é 50 libras em reais?"),
         ("今天北京的天气怎么样？", "明天北京的天气怎么样？"),
         ("O banco abre no sábado?", "O banco abre no domingo?"),
         ("英语难学吗？", "日语难学吗？")],
        [("How long should I boil an egg?", "How many minutes should I boil an egg?"),
         ("Quanto é 100 reais em dólares?", "Converter 100 reais para dólares"),
         ("聪明天才是怎么培养的", "天才是怎么培养的"),  # "聪明天才" holds "明天", not a day
         ("What's on TV tonight?", "what is on tv tonight")],
    ),
    language_guard: (
        [("How do I configure the router?", "Como configurar o roteador?"),
         ("如何配置路由器", "Como configurar o roteador?"),
         ("What is a distributed system?", "什么是分布式系统")],
        [("How do I configure the router?", "How to set up the router?"),
         ("iPhone 15", "iPhone 15 preço"),  # too little text to tell
         ("What is 分布式系统 e como funciona?", "What is 分布式系统 e como funciona?")],
    ),
}


@pytest.mark.parametrize(
    ("guard", "query", "candidate", "fires"),
    [(g, q, c, True) for g, (rej, _) in GUARD_CASES.items() for q, c in rej]
    + [(g, q, c, False) for g, (_, acc) in GUARD_CASES.items() for q, c in acc],
    ids=lambda v: getattr(v, "__name__", None) or (v if isinstance(v, str) else str(v))[:24],
)
def test_guard_on_its_own_cases(guard: object, query: str, candidate: str, fires: bool) -> None:
    assert callable(guard)
    assert (guard(query, candidate) is not None) is fires
    assert (guard(candidate, query) is not None) is fires  # symmetric


# --- ordered arguments: one mechanism over every asymmetric connective, in three languages
ORDERED_SWAPS = [
    ("Convert 5 km to miles", "Convert 5 miles to km"),
    ("Converter 5 quilômetros em milhas", "Converter 5 milhas em quilômetros"),
    ("5 kilometers to miles", "5 milhas em quilômetros"),  # spelled differently, same units
    ("Train times from Lisbon to Porto", "Train times from Porto to Lisbon"),
    ("flights from New York to Los Angeles", "flights from Los Angeles to New York"),
    ("Como ir de Lisboa para o Porto?", "Como ir do Porto para Lisboa?"),
    ("Como ir de Lisboa ao Porto?", "Como ir do Porto a Lisboa?"),
    ("从北京到上海的高铁", "从上海到北京的高铁"),
    ("北京飞上海的航班", "上海飞北京的航班"),
    ("What is 10 minus 3?", "What is 3 minus 10?"),
    ("Quanto é 10 menos 3?", "Quanto é 3 menos 10?"),
    ("10 divided by 2", "2 divided by 10"),
    ("Quanto é 10 dividido por 2?", "Quanto é 2 dividido por 10?"),
    ("10除以2等于多少", "2除以10等于多少"),
    ("what is 10 / 4", "what is 4 / 10"),
    ("Translate from English to Portuguese: good morning",
     "Translate from Portuguese to English: good morning"),
    ("把这句话从英文翻译成中文", "把这句话从中文翻译成英文"),
    ("USD to EUR", "EUR to USD"),
    ("What is 100 USD in EUR?", "What is 100 EUR in USD?"),
    ("Quanto vale 100 reais em dólares?", "Quanto vale 100 dólares em reais?"),
    ("100美元换成人民币是多少？", "100人民币换成美元是多少？"),
    ("1公斤等于多少磅？", "1磅等于多少公斤？"),
    ("How many cups are in a liter?", "How many liters are in a cup?"),
    ("Is a crocodile bigger than an alligator?", "Is an alligator bigger than a crocodile?"),
    ("O Brasil é maior que a Argentina?", "A Argentina é maior que o Brasil?"),
    ("O Brasil é maior do que a Argentina?", "A Argentina é maior do que o Brasil?"),
    ("猫比狗聪明吗？", "狗比猫聪明吗？"),
    ("Convert 5 miles to km", "How many miles is 5 km?"),  # the quantity word is the target
    ("how many ounces in a pound", "how many pounds in an ounce"),
    ("Como transferir dinheiro do Nubank para o Itaú?",
     "Como transferir dinheiro do Itaú para o Nubank?"),
    ("把文件从电脑传到手机", "把文件从手机传到电脑"),  # jieba's "传到" is verb + direction
    ("Translate this to Spanish from English", "Translate this to English from Spanish"),
]

ORDERED_SAME = [
    # symmetric connectives name no order
    ("Python vs Java", "Java vs Python"),
    ("Python or Java for beginners?", "Java or Python for beginners?"),
    ("Diferença entre Python e Java", "Diferença entre Java e Python"),
    ("猫和狗哪个更聪明", "狗和猫哪个更聪明"),
    ("difference between a crocodile and an alligator",
     "difference between an alligator and a crocodile"),
    ("How is Quora different from Wikipedia?", "How is Wikipedia different from Quora?"),
    # the same direction in another construction
    ("Convert 5 km to miles", "How many miles is 5 km?"),
    ("Convert 5 km to miles", "5 kilometers in miles"),
    ("Quanto é 100 reais em dólares?", "Converter 100 reais para dólares"),
    ("Como ir de Lisboa para o Porto?", "Qual a melhor forma de ir de Lisboa ao Porto?"),
    ("从北京到上海怎么走？", "北京到上海怎么去？"),
    ("100美元换成人民币是多少？", "100美元等于多少人民币？"),
    ("How do I get to Lisbon from Porto?", "How do I get from Porto to Lisbon?"),
    ("How many ml in 3 cups?", "convert 3 cups to ml"),
    ("How much is 100 dollars in euros?", "100 USD to EUR"),
    # both directions named on one side
    ("flights from Lisbon to Porto and from Porto to Lisbon", "flights from Porto to Lisbon"),
    # Portuguese-looking words in English and resultative 到 in Chinese are not connectives
    ("How do I delete a question from Quora?", "How do you delete a question on Quora?"),
    ("正宗的大闸蟹去哪里买？", "哪里可以买到正宗的大闸蟹"),
    ("口香糖弄到衣服上怎么去除呢？", "衣服上弄到口香糖怎么去除?"),
    ("Antes ou depois de comer?", "Depois ou antes de comer?"),
]


@pytest.mark.parametrize(("stored", "asked"), ORDERED_SWAPS)
def test_swapped_arguments_are_refused(stored: str, asked: str) -> None:
    reason = ordered_arguments_guard(asked, stored)
    assert reason is not None and "opposite order" in reason
    assert ordered_arguments_guard(stored, asked) is not None  # symmetric
    assert not run_guards(asked, stored).ok


@pytest.mark.parametrize(("stored", "asked"), ORDERED_SAME)
def test_same_or_unordered_arguments_pass(stored: str, asked: str) -> None:
    assert ordered_arguments_guard(asked, stored) is None
    assert ordered_arguments_guard(stored, asked) is None


def test_ordered_pairs_canonicalise_arguments() -> None:
    # Units take one identity in every language; numbers their value; "convert" is no argument.
    assert ordered_pairs("Convert 5 km to miles") == {("5", "mile"), ("km", "mile")}
    assert ordered_pairs("converter cinco quilômetros em milhas") == {("5", "mile"),
                                                                      ("km", "mile")}
    assert ordered_pairs("5公里换成英里") == {("5", "mile"), ("km", "mile")}
    assert ordered_pairs("Python vs Java") == frozenset()
    assert ordered_pairs("How to learn Python") == frozenset()  # nothing left of "to"
    assert ordered_pairs("What is the capital of France?") == frozenset()


def test_class_terms_take_the_longest_spelling() -> None:
    assert class_terms("the day after tomorrow") == {("time reference", "after tomorrow")}
    assert class_terms("jogos neste fim de semana") == {("time reference", "this weekend")}
    assert class_terms("这周末有什么电影") == {("time reference", "this weekend")}
    assert class_terms("一英里是多少公里") == {("unit", "mile"), ("unit", "km")}
    assert class_terms("小米手机的密码") == frozenset()  # 米 and 码 inside other words
    assert ("currency", "brl") in class_terms("R$ 50")
