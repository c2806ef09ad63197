"""System prompts written in the question's own language, for small embedded models.

A 135M–270M model follows an instruction far better when the instruction is in the language
it must answer in: told in English to "answer in the language of the question", SmolLM2
answered Portuguese questions in broken Portuguese and Chinese ones in English
(``bench/results/chat_models.md``). So the gateway detects the question's language once and
picks the prompt written in it; languages without a prompt here get the English one.
"""

from __future__ import annotations

from reprise.cache.guards import detect_language

# Plain chat: short, correct, in this language.
CHAT = {
    "en": "You are a helpful assistant. Answer the question correctly and briefly, in "
          "English, in two or three sentences.",
    "pt": "Você é um assistente prestativo. Responda à pergunta de forma correta e breve, "
          "em português, em duas ou três frases.",
    "zh": "你是一个乐于助人的助手。请用简体中文正确、简短地回答问题，两三句话即可。",
}

# Answers from documents: only from the numbered sources, citing them as [n].
GROUNDED = {
    "en": "Answer the user's question using only the numbered sources below, in English, "
          "in two or three sentences. Cite the sources you use with their numbers in square "
          "brackets, like [1] or [2]. If the sources do not contain the answer, say that the "
          "documents do not contain it; do not invent facts.",
    "pt": "Responda à pergunta do usuário usando apenas as fontes numeradas abaixo, em "
          "português, em duas ou três frases. Cite as fontes que usar com o número entre "
          "colchetes, como [1] ou [2]. Se as fontes não contêm a resposta, diga que os "
          "documentos não a contêm; não invente fatos.",
    "zh": "请只根据下面编号的资料，用简体中文回答用户的问题，两三句话即可。"
          "引用资料时在方括号中写出编号，例如[1]或[2]。如果资料中没有答案，"
          "请说明文档中没有相关内容，不要编造事实。",
}


def question_language(question: str) -> str:
    """'en', 'pt' or 'zh': the prompt language for this question (English when unsure)."""
    lang = detect_language(question)
    return lang if lang in CHAT else "en"


def chat_prompt(question: str) -> str:
    return CHAT[question_language(question)]


def grounded_prompt(question: str) -> str:
    return GROUNDED[question_language(question)]
