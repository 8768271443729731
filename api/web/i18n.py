"""The pages' languages: message catalogs (gettext .po files in the package), chosen per request.

Chinese first: `zh-CN` is the default, `en` beside it. The message ids are English; each
language's catalog is `locale/<lang>/LC_MESSAGES/messages.po`, read and compiled when first used
(so an editable install, a wheel and a source tree all serve the same strings, with no build
step to forget). A request picks its language by `?lang=` first, then `Accept-Language`.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

WEB = Path(__file__).resolve().parent
TEMPLATES = WEB / "templates"
LOCALE = WEB / "locale"

LANGUAGES = ("zh-CN", "en")
DEFAULT_LANGUAGE = "zh-CN"
SOURCE_LANGUAGE = "en"  # the message ids' own language
# Each language's own name, shown as such on the switch (not translated: an endonym is data).
LANGUAGE_NAMES = {"zh-CN": "中文", "en": "English"}
# Which of ours serves a primary language subtag (zh-TW readers read simplified Chinese better
# than English).
_BY_PRIMARY = {"zh": "zh-CN", "en": "en"}
_MAX_ACCEPT_ITEMS = 32  # an Accept-Language header is short; ignore the rest of a long one


def catalog_path(lang: str) -> Path:
    return LOCALE / lang.replace("-", "_") / "LC_MESSAGES" / "messages.po"


def catalog_messages(lang: str) -> dict[str, str]:
    """msgid -> msgstr of a language's catalog (empty where untranslated)."""
    with open(catalog_path(lang), "rb") as f:
        catalog = read_po(f, locale=lang.replace("-", "_"))
    return {str(m.id): str(m.string or "") for m in catalog if m.id}


@cache
def translations(lang: str) -> Translations:
    """The compiled catalog of a language (read once per process)."""
    with open(catalog_path(lang), "rb") as f:
        catalog = read_po(f, locale=lang.replace("-", "_"))
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(buffer, domain="messages")


def template_messages() -> set[str]:
    """Every message id the templates use (what the catalogs must hold)."""
    method_map = [("**.html", "jinja2.ext:babel_extract")]
    return {msg if isinstance(msg, str) else msg[0]
            for _, _, msg, _, _ in extract_from_dir(str(TEMPLATES), method_map)}


def negotiate(lang_param: str | None, accept_language: str | None) -> str:
    """The page's language: a known `?lang=`, else the best of Accept-Language, else zh-CN."""
    if lang_param:
        for lang in LANGUAGES:
            if lang_param.lower() == lang.lower():
                return lang
    for tag in _preferred(accept_language or ""):
        lang = _BY_PRIMARY.get(tag.split("-", 1)[0])
        if lang is not None:
            return lang
    return DEFAULT_LANGUAGE


def _preferred(header: str) -> list[str]:
    """Accept-Language's tags, most wanted first (RFC 9110 §12.5.4; q=0 means "not this")."""
    weighted = []
    for i, item in enumerate(header.split(",")[:_MAX_ACCEPT_ITEMS]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if tag and q > 0:
            weighted.append((-q, i, tag.strip().lower()))
    return [tag for _, _, tag in sorted(weighted)]
