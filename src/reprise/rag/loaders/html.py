"""HTML → the page's main text: no scripts, styles, navigation, menus or hidden elements.

Generic rules, not one site's markup: drop elements that never hold the article (script,
nav, header, footer, aside, forms, ARIA navigation/banner roles, hidden elements, and
ids/classes that name navigation, sidebars, tables of contents or edit links), then read
the ``<main>`` / ``role=main`` / single ``<article>`` if there is one, else the body. Block
elements become line breaks and table rows become ``cell | cell`` lines so that headings,
paragraphs and tables stay apart for the chunker.
"""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup, Comment, NavigableString, Tag

from reprise.rag.documents import MIME_HTML, LoadedDocument, Page
from reprise.rag.loaders.text import decode_text, normalize_text

_DROP_TAGS = [
    "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
    "nav", "header", "footer", "aside", "form", "button", "input", "select", "textarea",
    "menu", "dialog", "link", "meta",
]
_DROP_ROLES = {"navigation", "banner", "contentinfo", "search", "menu", "menubar", "toolbar",
               "complementary", "dialog", "alert"}
_BOILERPLATE = re.compile(
    r"(^|[\s_-])(nav|navbar|navbox|navigation|menu|sidebar|breadcrumbs?|footer|header|"
    r"cookie|banner|toc|editsection|jump-link|skip-link|sitenotice|printfooter|catlinks|"
    r"noprint|share|social|advert|ads)([\s_-]|$)", re.I)
_BLOCK = {"p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "h1",
          "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "figure", "figcaption", "table",
          "caption", "address", "hr", "br", "details", "summary", "tr"}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def load_html(filename: str, data: bytes, sha256: str) -> LoadedDocument:
    soup = BeautifulSoup(decode_text(data, filename), "lxml")
    title = _title(soup)
    _remove_boilerplate(soup)
    root = _main_root(soup)
    _flatten_tables(root)
    for tag in root.find_all(_BLOCK):
        tag.insert_before("\n")
        tag.insert_after("\n")
    text = normalize_text(root.get_text())
    return LoadedDocument(filename, MIME_HTML, sha256, [Page(1, text)], title)


def _title(soup: BeautifulSoup) -> str | None:
    if soup.title and soup.title.string and soup.title.string.strip():
        return normalize_text(soup.title.string)
    h1 = soup.find("h1")
    return normalize_text(h1.get_text(" ")) if h1 else None


def _remove_boilerplate(soup: BeautifulSoup) -> None:
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(_is_boilerplate):
        tag.decompose()


def _is_boilerplate(tag: Tag) -> bool:
    if tag.name in ("html", "body", "main", "article") or tag.attrs is None:
        return False
    if tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
        return True
    if tag.get("role") in _DROP_ROLES or _HIDDEN_STYLE.search(str(tag.get("style") or "")):
        return True
    classes: Any = tag.get("class") or []
    names = " ".join([*classes, str(tag.get("id") or "")]).strip()
    return bool(names) and _BOILERPLATE.search(names) is not None


def _main_root(soup: BeautifulSoup) -> Any:
    for candidate in (soup.find("main"), soup.find(True, attrs={"role": "main"})):
        if candidate is not None and candidate.get_text(strip=True):
            return candidate
    articles = soup.find_all("article")
    if len(articles) == 1 and articles[0].get_text(strip=True):
        return articles[0]
    return soup.body or soup


def _flatten_tables(root: Any) -> None:
    """Innermost tables first: each row becomes one ``a | b | c`` line of text."""
    for table in reversed(root.find_all("table")):
        rows: list[str] = []
        for tr in table.find_all("tr"):
            cells = [" ".join(c.get_text(" ").split()) for c in tr.find_all(["td", "th"])]
            if any(cells):
                rows.append(" | ".join(cells))
        caption = table.find("caption")
        head = [" ".join(caption.get_text(" ").split())] if caption else []
        table.replace_with(NavigableString("\n" + "\n".join(head + rows) + "\n"))
