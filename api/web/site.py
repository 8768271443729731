"""The pages people open: `/`, the API documentation at `/docs` and `/redoc`, the not-found page.

Server-rendered HTML from Jinja2 templates (markup only: the figures come from the same reads
the JSON API serves), in the request's language, with no script of its own, no font or asset
from elsewhere. Swagger UI and ReDoc are served from the assets the `fastapi-offline` package
ships, so the documentation works on a network with no way out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from babel.dates import format_datetime
from babel.numbers import format_decimal
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.problems import http_error_problem
from api.web import i18n
from domain.errors import DomainError
from ledger.application import Registry
from ledger.checkpoints import checkpoint_json

STATIC = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
STATIC_URL = "/static"
DOCS_ASSETS_URL = "/static/api-docs"
# The landing page runs no script and loads only this server's style sheet and icon.
PAGE_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Swagger UI and ReDoc run their own scripts (Swagger UI's start is inline); they may fetch
# only from this server, whatever their code asks for (ReDoc asks for Redocly's logo).
DOCS_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _environment(lang: str) -> Environment:
    """One template environment per language, with that language's catalog installed."""
    env = Environment(loader=FileSystemLoader(i18n.TEMPLATES), autoescape=select_autoescape(),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(i18n.translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page in the request's language."""
    lang = i18n.negotiate(request.query_params.get("lang"), request.headers.get("accept-language"))
    env = _environment(lang)
    title = i18n.translations(lang).gettext(context.pop("title_id"))
    html = env.get_template(template).render(
        lang=lang, languages=i18n.LANGUAGES, language_names=i18n.LANGUAGE_NAMES, title=title,
        root=request.scope.get("root_path", ""), version=request.app.version, **context)
    headers = {**PAGE_SECURITY, "Content-Language": lang, "Vary": "Accept-Language"}
    return HTMLResponse(html, status_code=status, headers=headers)


def landing_facts(registry: Registry, lang: str) -> dict[str, Any]:
    """What the landing page shows: the registry's identity and its latest checkpoint."""
    genesis, position, names = registry.view(
        lambda p: (p.genesis, p.position, {pid: q.name for pid, q in p.participants.items()}))
    facts: dict[str, Any] = {"genesis": genesis, "position": format_decimal(position, locale=_babel(lang)),
                             "checkpoint": None}
    if genesis is not None:
        facts["operator_name"] = names.get(genesis.operator_id, genesis.operator_id)
    try:
        checkpoint = checkpoint_json(registry)
    except DomainError:  # none signed yet
        return facts
    signed_at = dt.datetime.fromtimestamp(checkpoint["time"], dt.UTC)
    facts.update(
        checkpoint=checkpoint,
        checkpoint_size=format_decimal(checkpoint["size"], locale=_babel(lang)),
        checkpoint_iso=signed_at.isoformat().replace("+00:00", "Z"),
        checkpoint_time=format_datetime(signed_at, "long", tzinfo=dt.UTC, locale=_babel(lang)),
        cosigners=[{"id": c["witness"], "name": names.get(c["witness"], c["witness"])}
                   for c in checkpoint["cosignatures"]])
    return facts


def _babel(lang: str) -> str:
    return lang.replace("-", "_")


def wants_html(request: Request) -> bool:
    """A browser asking for a page (API clients ask for JSON, or for anything)."""
    return (request.method in ("GET", "HEAD")
            and "text/html" in request.headers.get("accept", "").lower())


def _mended(page: HTMLResponse, head: str = "") -> HTMLResponse:
    """FastAPI's Swagger UI / ReDoc page with the language its text is in (English) declared,
    and `head` added to it."""
    html = bytes(page.body).decode("utf-8")
    html = html.replace("<html>", '<html lang="en">', 1).replace("</head>", head + "</head>", 1)
    return HTMLResponse(html, status_code=page.status_code, headers=DOCS_SECURITY)


def install(app: FastAPI, registry: Callable[[], Registry]) -> None:
    """Add the pages, their static files and the HTTP error handler to the app."""
    # Mounted in this order: /static would otherwise take /static/api-docs too.
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="api-docs-assets")
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="static")

    def landing(request: Request) -> HTMLResponse:
        lang = i18n.negotiate(request.query_params.get("lang"),
                              request.headers.get("accept-language"))
        return render(request, "landing.html", title_id="Forestry carbon ticket registry",
                      **landing_facts(registry(), lang))

    app.add_api_route("/", landing, methods=["GET"], include_in_schema=False,
                      response_class=HTMLResponse)

    def favicon() -> str:
        return f"{STATIC_URL}/favicon.svg"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _mended(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{favicon()}",
            oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}",
            swagger_ui_parameters=app.swagger_ui_parameters),
            f'<link rel="stylesheet" href="{root}{STATIC_URL}/api-docs.css">')

    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _mended(get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{favicon()}", with_google_fonts=False))

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    assert app.swagger_ui_oauth2_redirect_url is not None
    app.add_api_route(app.swagger_ui_oauth2_redirect_url, swagger_redirect, methods=["GET"],
                      include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404 and wants_html(request):
            return render(request, "not_found.html", status=404, title_id="Page not found",
                          path=request.url.path)
        return http_error_problem(request, exc)

    app.add_exception_handler(StarletteHTTPException, http_error)

