"""The web UI in a real browser (Playwright driving Debian's chromium, headless) against a real
server, in two worlds.

The tiny synthetic world (tests/unit/serving_support, fast): the explorer lists a user's
recommendations and a click removes the clicked item from the refreshed list; an item added
through the form with a poster is in an anonymous visitor's top 20 at once, poster shown; after
some traffic the operations page shows a non-zero request rate, the stage table and the served
version. Its screenshots go to tests/e2e/artifacts/tiny-*.png (git-ignored).

The `make demo` world (`test_demo_*`): `strata demo --images <ML-100K posters>` runs as a real
process (the demo's own steps and server, trained small: one epoch) over the shared
MovieLens-100K copy and its posters; the explorer shows the catalogue's real titles with every
poster that exists decoded in the browser, an item added with a poster is shown with it, and the
operations page shows the traffic. These take the README's screenshots (1280x900 viewport):
explorer.png, explorer-new-item.png and operations.png go to tests/e2e/artifacts/ on a normal
run (so `make test` never dirties the git tree), and to docs/img/ only when asked:

    STRATA_UPDATE_DOCS_IMG=1 .venv/bin/python -m pytest tests/e2e/test_web_ui.py -k demo

Look at the images before committing them. The shared data is read in place (never copied into
the repository); without it these tests follow the suite's rule for shared data (conftest).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from strata.serving.app import create_app
from tests.ci import missing
from tests.e2e.test_pipelines_movielens import SMALL
from tests.unit.serving_support import (
    TOKEN,
    LiveServer,
    free_port,
    serving_settings,
    trained_registry,
)

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
STRATA = Path(sys.executable).with_name("strata")


def _need_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
    if not CHROMIUM.is_file():
        missing("no /usr/bin/chromium (Debian package chromium; .ci/run installs it)")


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
    page.screenshot(path=str(ARTIFACTS / "tiny-explorer.png"), full_page=True)


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
    page.screenshot(path=str(ARTIFACTS / "tiny-explorer-new-item.png"), full_page=True)


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
        page.screenshot(path=str(ARTIFACTS / "tiny-operations.png"), full_page=True)
    finally:
        stop.set()
        worker.join(10)


# --- the `make demo` world: MovieLens-100K with posters; these take the docs screenshots --------


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Screenshot the viewport to docs/img/<name> when STRATA_UPDATE_DOCS_IMG=1, else to the
    artifacts folder; 256 colours keep a page of posters at about 300 KB instead of 1 MB."""
    from PIL import Image

    out = DOCS_IMG if os.environ.get("STRATA_UPDATE_DOCS_IMG") == "1" else ARTIFACTS
    out.mkdir(exist_ok=True)
    page.mouse.move(0, 0)  # no hover outline on whichever card is under the pointer
    rgb = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    rgb.quantize(256, method=Image.Quantize.FASTOCTREE).save(out / name, optimize=True)


class DemoRun(NamedTuple):
    url: str  # where it serves
    printed: str  # what it printed before serving (steps, facts, samples)
    home: Path  # its STRATA_HOME


@pytest.fixture(scope="module")
def demo(
    ml100k_dir: Path, posters_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoRun]:
    """`strata demo --images <posters>` as a real process (what `make demo` runs, plus the
    posters), on a free port, trained small (one epoch) to keep the test short."""
    _need_browser()
    home = tmp_path_factory.mktemp("demo") / "home"
    port = free_port()
    env = {**os.environ, **SMALL, "STRATA_HOME": str(home), "STRATA_TRAINING__EPOCHS": "1",
           "STRATA_TRAINING__RANKER_MAX_POSITIVES": "1000",
           "STRATA_TRAINING__POPULARITY_SNAPSHOTS": "4",
           "STRATA_SERVE__PORT": str(port), "STRATA_SERVE__ADMIN_TOKEN": TOKEN}  # fmt: skip
    fetch = subprocess.run(
        [str(STRATA), "data", "fetch", "movielens-100k", "--path", str(ml100k_dir)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert fetch.returncode == 0, fetch.stderr
    log = home.parent / "demo.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen([str(STRATA), "demo", "--images", str(posters_dir)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, "demo exited:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "demo not ready:\n" + log.read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # still training, or not listening yet
            time.sleep(1)
        text = log.read_text()
        print(text[text.find("strata demo: movielens-100k") :].split("facts")[0])  # step times
        yield DemoRun(url, text, home)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_demo_ran_every_step_with_the_posters(demo: DemoRun) -> None:
    out = demo.printed
    steps = ("offline store: features", "content encoders", "train two-tower", "ANN index",
             "materialize", "(cold start)", "(warm)", "serving movielens-100k on")  # fmt: skip
    for step in steps:
        assert step in out, step
    assert re.search(r"content\.has_image\s*\S\s*1425\b", out), out  # every poster encoded
    registry = demo.home / "registry" / "movielens-100k"
    assert (registry / "v0001" / "index" / "manifest.json").is_file()
    assert (registry / "serving").read_text().strip() == "v0001"


def _ml100k_titles(folder: Path) -> dict[int, str]:
    from strata.datasets.movielens import parse_movielens_100k

    items = parse_movielens_100k(folder).items
    return dict(zip(items["item_id"].astype(int), items["title"].astype(str), strict=True))


def _card_facts(page) -> list[dict]:  # type: ignore[no-untyped-def]
    """Per card: item id, shown title, poster source and its decoded width (0: not loaded)."""
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#items .card",
        """els => els.map(e => ({item: Number(e.dataset.item),
            title: e.querySelector('b').textContent,
            src: e.querySelector('img').getAttribute('src'),
            width: e.querySelector('img').naturalWidth}))""",
    )


def _all_images_settled(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function("[...document.querySelectorAll('#items img')].every(i => i.complete)")


def test_demo_explorer_shows_ml100k_titles_and_posters(
    demo: DemoRun, browser, ml100k_dir: Path, posters_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    titles = _ml100k_titles(ml100k_dir)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(demo.url + "/ui")
    page.wait_for_function("document.getElementById('items').dataset.loaded !== undefined")
    assert page.inner_text("#version").startswith("movielens-100k · v0001 · 1682 items")
    stamp = page.get_attribute("#items", "data-loaded")
    page.fill("#user", "405")  # the demo's warm user (the most active before the cut)
    page.click("#ask button")
    page.wait_for_function(f"document.getElementById('items').dataset.loaded !== '{stamp}'")
    _all_images_settled(page)
    cards = _card_facts(page)
    assert len(cards) == 20
    with_poster = 0
    for c in cards:
        assert c["title"] == titles[c["item"]], c  # the catalogue's titles, not "item <id>"
        if (posters_dir / f"{c['item']}.jpg").is_file():  # the poster file, served and decoded
            assert c["src"] == f"/items/{c['item']}/image" and c["width"] > 0, c
            with_poster += 1
        else:
            assert c["src"].startswith("data:image/svg+xml"), c  # the "no image" placeholder
    assert with_poster >= 10, cards  # 1,425 of 1,682 items (97.8% of ratings) have one
    _shot(page, "explorer.png")


def _poster(title: str) -> bytes:
    """A made-up poster (a gradient and the title) for an item added through the UI."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (128, 192))
    draw = ImageDraw.Draw(img)
    for y in range(192):
        draw.line([(0, y), (127, y)], fill=(40 + y // 2, 30, 90 + y // 3))
    draw.text((10, 150), title, fill=(255, 230, 160))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_demo_new_item_with_a_poster_is_shown(demo: DemoRun, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    poster = tmp_path / "poster.jpg"
    poster.write_bytes(_poster("Paper Moons"))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(demo.url + "/ui")
    page.wait_for_selector("#new-genres input")
    page.fill("#new-id", "1700")
    page.fill("#new-title", "Paper Moons")
    page.fill("#new-year", "1999")  # newer than the catalogue: first in the fresh-item slots
    page.check('#new-genres input[value="Drama"]')
    page.check('#new-genres input[value="Romance"]')
    page.set_input_files("#new-image", str(poster))
    page.fill("#token", TOKEN)
    page.click("#add button")
    # The first add of a server loads the item tower and the content encoders.
    page.wait_for_function("document.getElementById('added').textContent !== ''", timeout=90000)
    added = page.inner_text("#added")
    assert added.startswith("added Paper Moons") and "anonymous: position" in added, added
    page.wait_for_function("document.getElementById('version').textContent.includes('(1 live)')")
    page.check("#anon")
    page.fill("#k", "14")  # two rows of cards: the shot shows them and the form's answer
    stamp = page.get_attribute("#items", "data-loaded")
    page.click("#ask button")
    page.wait_for_function(f"document.getElementById('items').dataset.loaded !== '{stamp}'")
    _all_images_settled(page)
    cards = {c["item"]: c for c in _card_facts(page)}
    assert 1700 in cards, added
    assert cards[1700]["title"] == "Paper Moons" and cards[1700]["width"] == 128
    assert "new" in page.inner_text('#items .card[data-item="1700"] .badge.fresh')
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    _shot(page, "explorer-new-item.png")


def test_demo_operations_show_traffic(demo: DemoRun, browser) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=demo.url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                c.get("/recommend", params={"user_id": 1 + (i * 37) % 943, "k": 20})
                i += 1
                stop.wait(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(demo.url + "/ui/ops")
        page.wait_for_function("Number(document.getElementById('rate').textContent) > 0",
                               timeout=15000)  # fmt: skip
        page.wait_for_function("document.querySelectorAll('#stages tbody tr').length >= 5")
        page.wait_for_function("document.querySelectorAll('#versions tbody tr').length >= 1")
        assert page.inner_text("#model") == "v0001"
        assert "movielens-100k: the registry serves v0001" in page.inner_text("#pointer")
        assert "holdout_ndcg@10" in page.inner_text("#versions")
        chart = "document.querySelector('#rate-chart polyline')"
        page.wait_for_function(f"{chart} && {chart}.getAttribute('points').split(' ').length >= 3")
        _shot(page, "operations.png")
    finally:
        stop.set()
        worker.join(10)
