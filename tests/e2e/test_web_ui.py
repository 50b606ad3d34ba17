"""The web UI in a real browser (Playwright driving Debian's chromium, headless) against a real
server: the explorer lists a user's recommendations and a click removes the clicked item from
the refreshed list; an item added through the form with a poster is in an anonymous visitor's
top 20 at once, poster shown; after some traffic the operations page shows a non-zero request
rate, the stage table and the served version. Screenshots go to tests/e2e/artifacts/."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from strata.serving.app import create_app
from tests.unit.serving_support import TOKEN, LiveServer, serving_settings, trained_registry

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"


def _need_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
    if not CHROMIUM.is_file():
        why = "no /usr/bin/chromium (Debian package chromium; .ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_browser()
    home = tmp_path_factory.mktemp("ui") / "home"
    shutil.copytree(trained_registry().parent, home)  # registry + offline store (titles)
    with LiveServer(create_app(serving_settings(home))) as live:
        yield live.url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--headless", "--no-sandbox", "--disable-gpu"])  # fmt: skip
        yield b
        b.close()


def _cards(page) -> list[int]:  # type: ignore[no-untyped-def]
    return [
        int(x)
        for x in page.eval_on_selector_all("#items .card", "els => els.map(e => e.dataset.item)")
    ]


def test_explorer_click_removes_the_item_from_the_refreshed_list(server: str, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "/ui")
    page.wait_for_function("document.getElementById('items').dataset.loaded !== undefined")
    stamp = page.get_attribute("#items", "data-loaded")
    page.fill("#user", "4")
    page.click("#ask button")
    page.wait_for_function(f"document.getElementById('items').dataset.loaded !== '{stamp}'")
    before = _cards(page)
    assert len(before) == 20
    assert "model v0001" in page.inner_text("#summary")
    stamp = page.get_attribute("#items", "data-loaded")
    t0 = time.monotonic()
    page.click(f'#items .card[data-item="{before[0]}"]')
    page.wait_for_function(f"document.getElementById('items').dataset.loaded !== '{stamp}'",
                           timeout=5000)  # fmt: skip
    took = time.monotonic() - t0
    after = _cards(page)
    assert before[0] not in after and len(after) == 20
    assert "sent; list refreshed" in page.inner_text("#status")
    print(f"click -> refreshed list without the item: {took * 1000:.0f} ms")
    page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)


def test_a_new_item_with_a_poster_reaches_a_cold_visitors_list(
    server: str, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    poster = tmp_path / "poster.png"
    buf = io.BytesIO()
    Image.new("RGB", (60, 90), (200, 60, 40)).save(buf, format="PNG")
    poster.write_bytes(buf.getvalue())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "/ui")
    page.wait_for_selector("#new-genres input")
    page.fill("#new-id", "9001")
    page.fill("#new-title", "Paper Moons")
    page.fill("#new-year", "2002")
    page.check('#new-genres input[value="Drama"]')
    page.set_input_files("#new-image", str(poster))
    page.fill("#token", TOKEN)
    page.click("#add button")
    page.wait_for_function("document.getElementById('added').textContent.includes('anonymous')")
    added = page.inner_text("#added")
    assert added.startswith("added Paper Moons"), added
    assert "anonymous: position" in added, added  # in the anonymous visitor's top 20
    page.check("#anon")
    stamp = page.get_attribute("#items", "data-loaded")
    page.click("#ask button")
    page.wait_for_function(f"document.getElementById('items').dataset.loaded !== '{stamp}'")
    assert 9001 in _cards(page)  # retrieved or in a fresh slot: the catalogue is tiny
    card = '#items .card[data-item="9001"]'
    page.wait_for_function(f"document.querySelector('{card} img').naturalWidth === 60")
    assert "new" in page.inner_text(card) and "Paper Moons" in page.inner_text(card)
    page.screenshot(path=str(ARTIFACTS / "explorer-new-item.png"), full_page=True)


def test_operations_show_traffic_and_the_served_version(server: str, browser) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server, timeout=10) as c:
            i = 0
            while not stop.is_set():
                c.get("/recommend", params={"user_id": 1 + i % 30, "k": 10})
                i += 1
                stop.wait(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server + "/ui/ops")
        page.wait_for_function("Number(document.getElementById('rate').textContent) > 0",
                               timeout=15000)  # fmt: skip
        page.wait_for_function("document.querySelectorAll('#stages tbody tr').length >= 5")
        page.wait_for_function("document.querySelectorAll('#versions tbody tr').length >= 1")
        assert page.inner_text("#model") == "v0001"
        assert "this replica serves v0001" in page.inner_text("#pointer")
        page.wait_for_function("document.querySelectorAll('#replicas tbody tr').length === 1")
        cells = page.locator("#replicas tbody td").all_inner_texts()
        assert cells[0].endswith("(this page)") and cells[1] == "v0001" and cells[4] == "ok"
        assert "ms" in page.inner_text("#latency")
        assert page.inner_text("#ctr") == "no CTR model served here"  # none trained in this home
        chart = "document.querySelector('#rate-chart polyline')"
        page.wait_for_function(f"{chart} && {chart}.getAttribute('points').split(' ').length >= 3")
        page.screenshot(path=str(ARTIFACTS / "operations.png"), full_page=True)
    finally:
        stop.set()
        worker.join(10)
