"""The pages people open, and what a wrong path or method gets, in-process.

`/` is a small landing page (server-rendered, Chinese first, every string from the message
catalog); `/docs` and `/redoc` are served with their assets from the package; an unknown path is
`not_found` and a wrong method `method_not_allowed` with an `Allow` header. The browser tests
(tests/e2e/browser) open the same pages in Chromium against a real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.server import create_app
from api.web import i18n
from ledger.application import Registry
from ledger.checkpoints import checkpoint_json
from ledger.keys import Keyring

PROBLEM = "application/problem+json"
WITNESS = "fujian-eco"


@pytest.fixture(scope="module")
def registry(demo_on_disk: Callable[[Path], Registry],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    app = demo_on_disk(tmp_path_factory.mktemp("pages"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(registry: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(registry), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def empty_client(tmp_path: Path) -> Iterator[TestClient]:
    app = Registry(f"sqlite:///{tmp_path / 'empty.db'}", keyring=Keyring(tmp_path / "keys"),
                   auto_checkpoint=False)
    with TestClient(create_app(app), raise_server_exceptions=False) as c:
        yield c
    app.close()


def text_of(html: str) -> str:
    """The page's visible text, roughly: tags dropped, white space folded."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# Wrong paths and methods -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/nothing-here", "/v1/nothing", "/v1/tickets/SM-0000001/x/y"])
def test_an_unknown_path_is_not_found(client: TestClient, path: str) -> None:
    r = client.get(path, headers={"Accept": "application/json"})
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["code"] == "not_found"
    assert body["type"] == "urn:carbon-ledger:error:not_found"
    assert body["title"] == "nothing is served at that path"
    assert path in body["detail"]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/transfers", "POST"),           # a fast write path
    ("DELETE", "/v1/tickets/SM-0000001", "GET"),
    ("DELETE", "/v1/pledges", "GET, POST"),     # two routes share the path
    ("PUT", "/v1/pledges/PL-2021-001/release", "POST"),
    ("POST", "/healthz", "GET"),
    ("POST", "/", "GET"),
])
def test_a_wrong_method_is_method_not_allowed_with_allow(client: TestClient, method: str,
                                                          path: str, allow: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["allow"] == allow
    body = r.json()
    assert body["code"] == "method_not_allowed"
    assert body["title"] == "the path does not take that HTTP method"
    assert method in body["detail"] and path in body["detail"] and allow in body["detail"]


def test_a_person_who_mistypes_a_path_gets_a_page_in_their_language(client: TestClient) -> None:
    r = client.get("/tickets", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN"' in r.text
    assert "未找到" in text_of(r.text) and "/tickets" in text_of(r.text)
    assert 'href="/"' in r.text
    r = client.get("/tickets?lang=en", headers={"Accept": "text/html"})
    assert '<html lang="en"' in r.text and "Page not found" in text_of(r.text)


def test_the_new_codes_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text(encoding="utf-8")
    for code, status in (("not_found", 404), ("method_not_allowed", 405)):
        assert re.search(rf"\| \[`{code}`\]\(#{code}\) \|.*\| {status} \|", doc), code
        assert f"\n## {code}\n" in doc


# The landing page -------------------------------------------------------------------------------

def test_the_landing_page_says_what_this_registry_is_in_chinese_first(
        client: TestClient, registry: Registry) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert '<html lang="zh-CN"' in r.text
    genesis = registry.projection().genesis
    cp = checkpoint_json(registry)
    text = text_of(r.text)
    assert "林业碳票" in text and "登记簿" in text
    assert genesis.origin in text
    assert genesis.operator_key in text          # whole, to pin
    assert f"{cp['size']:,}" in text              # the checkpoint's size
    assert cp["root"] in text and cp["state_root"] in text
    assert [c["witness"] for c in cp["cosignatures"]] == [WITNESS]   # its cosigner, by name and id
    assert f"{registry.projection().participants[WITNESS].name} (<code>{WITNESS}</code>)" in r.text
    for href in ("/docs", "/redoc", "/openapi.json", "/v1/checkpoints/latest"):
        assert f'href="{href}"' in r.text
    assert r.headers["content-language"] == "zh-CN"
    assert "accept-language" in r.headers["vary"].lower()


@pytest.mark.parametrize(("query", "accept", "lang"), [
    ("?lang=en", None, "en"),
    ("", "en-GB,en;q=0.9", "en"),
    ("", "zh-TW,zh;q=0.9,en;q=0.5", "zh-CN"),
    ("", "fr-FR,de;q=0.8", "zh-CN"),              # nothing we have: Chinese
    ("?lang=xx", "en", "en"),                     # an unknown lang= is ignored
    ("?lang=zh-CN", "en", "zh-CN"),               # lang= wins over the header
])
def test_the_language_is_chosen_by_lang_then_accept_language(
        client: TestClient, query: str, accept: str | None, lang: str) -> None:
    headers = {"Accept-Language": accept} if accept else {}
    r = client.get("/" + query, headers=headers)
    assert r.status_code == 200
    assert f'<html lang="{lang}"' in r.text
    assert r.headers["content-language"] == lang
    english = "Forestry carbon ticket registry" in text_of(r.text)
    assert english == (lang == "en")


def test_the_english_page_has_the_same_figures(client: TestClient, registry: Registry) -> None:
    zh, en = text_of(client.get("/").text), text_of(client.get("/?lang=en").text)
    cp = checkpoint_json(registry)
    for fact in (cp["root"], cp["state_root"], registry.projection().genesis.operator_key):
        assert fact in zh and fact in en
    assert 'hreflang="zh-CN"' in client.get("/?lang=en").text


def test_the_landing_page_of_a_registry_with_no_checkpoint_says_so(empty_client: TestClient) -> None:
    r = empty_client.get("/?lang=en")
    assert r.status_code == 200
    text = text_of(r.text)
    assert "not initialised" in text
    assert "No checkpoint has been signed yet" in text


def test_the_landing_page_needs_no_script_and_fetches_only_its_own_files(client: TestClient) -> None:
    html = client.get("/").text
    assert "<script" not in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(ref.startswith(("/", "#", "?")) for ref in refs), refs
    assert "fonts.googleapis" not in html and "cdn" not in html.lower()
    csp = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'none'" in csp
    css = client.get("/static/site.css")
    assert css.status_code == 200 and "@import" not in css.text and "url(http" not in css.text


def test_the_landing_page_has_landmarks_and_a_skip_link(client: TestClient) -> None:
    html = client.get("/").text
    for landmark in ("<header", "<main", "<footer", "<nav"):
        assert landmark in html
    assert re.search(r'<a [^>]*href="#main"', html)
    assert '<main id="main"' in html
    assert "<h1" in html and html.count("<h1") == 1


# The API documentation pages --------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_load_their_assets_from_this_server(client: TestClient, path: str) -> None:
    html = client.get(path).text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert refs
    assert all(ref.startswith("/") for ref in refs), refs
    for ref in refs:
        if ref.startswith("/static/"):
            assert client.get(ref).status_code == 200, ref
    assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html


def test_the_swagger_oauth2_redirect_is_served(client: TestClient) -> None:
    assert client.get("/docs/oauth2-redirect").status_code == 200


# The message catalogs ---------------------------------------------------------------------------

def test_every_string_of_the_templates_is_in_every_catalog() -> None:
    used = i18n.template_messages()
    assert len(used) > 20
    for lang in i18n.LANGUAGES:
        catalog = i18n.catalog_messages(lang)
        missing = used - set(catalog)
        assert not missing, f"{lang} lacks {sorted(missing)}"
        if lang != i18n.SOURCE_LANGUAGE:
            untranslated = sorted(m for m in used if not catalog[m])
            assert not untranslated, f"{lang} leaves {untranslated} untranslated"


def test_the_catalogs_ship_with_the_package() -> None:
    for lang in i18n.LANGUAGES:
        assert i18n.catalog_path(lang).is_file()
    assert i18n.translations("zh-CN").gettext("Forestry carbon ticket registry") != (
        "Forestry carbon ticket registry")


def test_every_page_file_is_package_data() -> None:
    """A wheel (not only an editable install) carries every template, static file and catalog:
    each is matched by a [tool.setuptools.package-data] pattern of pyproject.toml."""
    import fnmatch
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["api"]
    web = repo / "api" / "web"
    files = [p for folder in ("templates", "static", "locale") for p in (web / folder).rglob("*")
             if p.is_file()]
    assert len(files) >= 8
    for path in files:
        relative = path.relative_to(repo / "api").as_posix()
        # setuptools globs: '*' stays within one folder
        assert any(fnmatch.fnmatch(relative, pat) and relative.count("/") == pat.count("/")
                   for pat in patterns), f"{relative} is not package data"
