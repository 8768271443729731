"""The pages a person opens first, in headless Chromium against a real server: `/`, `/docs` and
`/redoc` render with no request leaving loopback, Chinese first, and pass axe-core's checks.
Screenshots land in var/test-artifacts/screenshots/."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def operations(base_url: str) -> list[tuple[str, str, str]]:
    """(METHOD, path, summary) of every operation the server's OpenAPI description lists."""
    spec = httpx.get(base_url + "/openapi.json", timeout=30).json()
    return [(method.upper(), path, op.get("summary", ""))
            for path, item in spec["paths"].items() for method, op in item.items()]


def rendering_fonts(tab: Any, selector: str) -> list[str]:
    """The platform fonts Chromium drew the element's text with (DevTools' CSS domain)."""
    cdp = tab.page.context.new_cdp_session(tab.page)
    try:
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        cdp.send("CSS.enable")
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        return [f["familyName"] for f in fonts]
    finally:
        cdp.detach()


# The landing page -------------------------------------------------------------------------------

def test_the_landing_page_renders_in_chinese_with_nothing_off_loopback(site: Any, tab: Any) -> None:
    response = tab.goto(site.base_url + "/")
    assert response.status == 200
    page = tab.page
    assert page.get_attribute("html", "lang") == "zh-CN"
    assert page.inner_text("h1") == "林业碳票登记簿"
    checkpoint = httpx.get(site.base_url + "/v1/checkpoints/latest", timeout=30).json()
    operator = httpx.get(site.base_url + "/v1/participants/registry", timeout=30).json()
    body = page.inner_text("main")
    assert checkpoint["root"] in body and checkpoint["state_root"] in body
    assert f"{checkpoint['size']} 条记录" in body
    assert operator["keys"][0]["public_key"] in body
    assert "fujian-eco" in body
    assert not tab.refused, tab.refused
    # Chinese is drawn with a CJK font, not as boxes
    assert any("CJK" in name for name in rendering_fonts(tab, "h1")), rendering_fonts(tab, "h1")
    assert not tab.errors
    tab.assert_offline()
    shots = tab.shoot()
    assert all(p.stat().st_size > 10_000 for p in shots)
    tab.assert_accessible()


def test_the_language_switch_gives_the_same_page_in_english(site: Any, tab: Any) -> None:
    tab.goto(site.base_url + "/")
    zh_key = tab.page.inner_text("code.key >> nth=0")
    tab.page.get_by_role("link", name="English").click()
    tab.page.wait_for_load_state("networkidle")
    assert tab.page.url.endswith("/?lang=en")
    assert tab.page.get_attribute("html", "lang") == "en"
    assert tab.page.inner_text("h1") == "Forestry carbon ticket registry"
    assert tab.page.inner_text("code.key >> nth=0") == zh_key
    assert tab.page.get_attribute('a[hreflang="en"]', "aria-current") == "page"
    docs = tab.page.get_by_role("link", name="Interactive API documentation (Swagger UI)")
    assert docs.get_attribute("href") == "/docs"
    tab.assert_offline()
    tab.shoot()
    tab.assert_accessible()


def test_the_landing_page_works_with_javascript_off(site: Any, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False, locale="en-GB")
    try:
        page = context.new_page()
        assert page.goto(site.base_url + "/").status == 200
        assert page.get_attribute("html", "lang") == "en"   # from Accept-Language
        assert "Latest signed checkpoint" in page.inner_text("main")
        assert page.get_by_role("link", name="API reference (ReDoc)").get_attribute("href") == "/redoc"
    finally:
        context.close()


def test_the_skip_link_is_the_first_stop_and_leads_to_the_content(site: Any, tab: Any) -> None:
    tab.goto(site.base_url + "/")
    tab.page.keyboard.press("Tab")
    focused = tab.page.evaluate("document.activeElement.getAttribute('href')")
    assert focused == "#main"
    box = tab.page.locator(".skip-link").bounding_box()
    assert box is not None and box["y"] >= 0    # shown when focused
    tab.page.keyboard.press("Enter")
    assert tab.page.evaluate("document.activeElement.id") == "main"


def test_a_mistyped_path_gets_a_page_that_leads_home(site: Any, tab: Any) -> None:
    response = tab.goto(site.base_url + "/tickets/SM-0000001")
    assert response.status == 404
    assert tab.page.inner_text("h1") == "未找到该页面"
    assert "/tickets/SM-0000001" in tab.page.inner_text("main")
    tab.shoot()
    tab.assert_accessible()
    tab.page.get_by_role("link", name="登记簿首页").click()
    tab.page.wait_for_load_state("networkidle")
    assert tab.page.inner_text("h1") == "林业碳票登记簿"
    tab.assert_offline()


# The API documentation --------------------------------------------------------------------------

def test_swagger_ui_lists_every_operation_with_nothing_off_loopback(site: Any, tab: Any) -> None:
    expected = operations(site.base_url)
    assert len(expected) > 30
    tab.goto(site.base_url + "/docs")
    tab.page.wait_for_selector(".opblock", timeout=30_000)
    shown = tab.page.eval_on_selector_all(
        ".opblock", "els => els.map(e => [e.querySelector('.opblock-summary-method').innerText, "
        "e.querySelector('.opblock-summary-path').getAttribute('data-path')])")
    assert sorted(map(tuple, shown)) == sorted((m, p) for m, p, _ in expected)
    assert tab.page.get_by_text("Settle one trade (exchange)").count() == 1
    assert not tab.errors and not tab.refused, tab.errors + tab.refused
    tab.assert_offline()
    tab.shoot()
    tab.assert_accessible(waived={
        "color-contrast": "ReDoc's built-in theme greys (#93999c on white, red on its dark "
                          "sample panel) fall below 4.5:1",
        "nested-interactive": "ReDoc's markup"})
    # api/web/static/api-docs.css mends Swagger UI's colours; its markup we cannot change.
    tab.assert_accessible(waived={
        "nested-interactive": "Swagger UI puts its copy-path button inside each operation's "
                              "summary button"})


def test_redoc_lists_every_operation_with_nothing_off_loopback(site: Any, tab: Any) -> None:
    expected = operations(site.base_url)
    tab.goto(site.base_url + "/redoc")
    tab.page.wait_for_selector("[data-section-id^='operation/']", timeout=30_000)
    sections = tab.page.eval_on_selector_all(
        "[data-section-id^='operation/']", "els => els.map(e => e.dataset.sectionId)")
    assert len(set(sections)) == len(expected)
    for _, _, summary in expected[:5]:
        assert tab.page.get_by_role("heading", name=summary).count() >= 1, summary
    assert not tab.errors
    # ReDoc's code asks for Redocly's logo from its CDN; the page's CSP refuses it unsent.
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in r for r in tab.refused), tab.refused
    tab.assert_offline()
    tab.shoot(full_page=False)  # the whole reference is some 40,000 px tall
    tab.assert_accessible(waived={
        "color-contrast": "ReDoc's built-in theme greys (#93999c on white, red on its dark "
                          "sample panel) fall below 4.5:1",
        "nested-interactive": "ReDoc's markup"})
