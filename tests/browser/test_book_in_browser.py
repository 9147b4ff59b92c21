"""Open the built book in headless Chromium, as a reader would.

Every page in the table of contents loads without a 404 for any local file it asks for, the
search page finds a word, and each chapter's Colab button points at that chapter's notebook in
the repository named in _config.yml. A screenshot of each chapter page is saved to
``_build/screenshots/`` (BOOK_SCREENSHOTS overrides) to look at.

The book is read from ``BOOK_HTML`` (default ``_build/html``); build it first (``make book`` or
``make book-smoke``). Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them).
"""
from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from tools import ROOT, course

HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
SHOTS = Path(os.environ.get("BOOK_SCREENSHOTS", ROOT / "_build" / "screenshots"))

webdriver = pytest.importorskip("selenium.webdriver")
if not HTML.joinpath("index.html").exists():
    message = f"no built book at {HTML}: run `make book` (or `make book-smoke`) first"
    if "BOOK_HTML" in os.environ:  # asked for explicitly (make test-browser): a missing book fails
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.fail("Chromium and chromedriver are needed: apt-get install chromium chromium-driver",
                pytrace=False)


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


class _Handler(http.server.SimpleHTTPRequestHandler):
    missing: list[str] = []

    def send_error(self, code, message=None, explain=None):
        if code == 404:
            self.missing.append(unquote(urlparse(self.path).path))
        super().send_error(code, message, explain)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    _Handler.missing = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, url):
    browser.get(url)
    for _ in range(100):
        if browser.execute_script("return document.readyState") == "complete":
            break
        time.sleep(0.1)


@pytest.mark.parametrize("page", toc_files())
def test_page_loads_with_all_local_resources(server, browser, page):
    _Handler.missing.clear()
    _open(browser, f"{server}/{page}.html")
    titles = browser.execute_script(
        "return [...document.querySelectorAll('article h1')].map(h => h.textContent.trim())")
    assert titles and titles[0], f"{page}: no title"
    time.sleep(0.3)
    assert not _Handler.missing, f"{page}: 404 for {_Handler.missing}"
    broken_images = browser.execute_script(
        "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
        ".map(i => i.src)")
    assert not broken_images, f"{page}: images that did not load: {broken_images}"
    if page.startswith("notebooks/"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / f"{Path(page).name}.png"))


@pytest.mark.parametrize("page", [p for p in toc_files() if p.startswith("notebooks/")])
def test_colab_button_points_at_this_notebook(server, browser, page):
    _open(browser, f"{server}/{page}.html")
    links = browser.execute_script(
        "return [...document.querySelectorAll('a')].map(a => a.href)"
        ".filter(h => h.includes('colab.research.google.com'))")
    url = course.repository_url().removeprefix("https://github.com/")
    expected = (f"https://colab.research.google.com/github/{url}/blob/"
                f"{course.repository_branch()}/{page}.ipynb")
    assert expected in links, f"{page}: Colab links {links}, expected {expected}"


def test_chapter_pages_show_outputs_and_fold_solutions(server, browser):
    for page in [p for p in toc_files() if p.startswith("notebooks/0")]:
        _open(browser, f"{server}/{page}.html")
        outputs = browser.find_elements("css selector", ".cell_output")
        assert outputs, f"{page}: no executed outputs on the page"
        figures = browser.find_elements("css selector", ".cell_output img")
        assert figures, f"{page}: no figures on the page"
        solutions = browser.execute_script(
            "return [...document.querySelectorAll('.cell.tag_hide-input')].map(c => {"
            "  const d = c.querySelector('details'); return d ? d.open : 'no-toggle'; })")
        assert solutions, f"{page}: no folded solution cells"
        assert all(state is False for state in solutions), f"{page}: solutions not folded {solutions}"


def test_search_finds_attention(server, browser):
    _open(browser, f"{server}/search.html?q=attention")
    deadline = time.time() + 20
    results = []
    while time.time() < deadline:
        results = browser.find_elements("css selector", "#search-results li, ul.search li")
        if results:
            break
        time.sleep(0.5)
    assert results, "the search page found nothing for 'attention'"


def _math_pages() -> list[str]:
    """The table-of-contents pages whose source has display or inline TeX."""
    pages = []
    for page in toc_files():
        source = next((ROOT / f"{page}{ext}" for ext in (".ipynb", ".md")
                       if (ROOT / f"{page}{ext}").exists()), None)
        if source is not None and "$$" in source.read_text(encoding="utf-8"):
            pages.append(page)
    return pages


@pytest.mark.parametrize("page", _math_pages())
def test_math_is_typeset_by_the_books_own_mathjax(server, browser, page):
    """Formulas render with the MathJax the book carries (tools/offline_mathjax.py), not a CDN:
    the test machine has no internet, so typeset math here proves an offline reader gets it."""
    _open(browser, f"{server}/{page}.html")
    scripts = browser.execute_script(
        "return [...document.scripts].map(s => s.src).filter(s => s.toLowerCase().includes('mathjax'))")
    assert scripts and all(s.startswith(server) for s in scripts), \
        f"{page}: MathJax should come from the book itself, got {scripts}"
    deadline = time.time() + 20
    typeset = 0
    while time.time() < deadline and not typeset:
        typeset = browser.execute_script("return document.querySelectorAll('mjx-container svg').length")
        time.sleep(0.3)
    assert typeset, f"{page}: no formula was typeset"
    raw = browser.execute_script(
        "return [...document.querySelectorAll('div.math')].filter(d => !d.querySelector('mjx-container'))"
        ".map(d => d.textContent.trim().slice(0, 60))")
    assert not raw, f"{page}: formulas left as raw TeX: {raw}"


@pytest.mark.parametrize("page", [p for p in toc_files() if p.startswith("notebooks/")])
def test_every_figure_output_has_alt_text(server, browser, page):
    """A screen reader, or a reader whose images did not load, gets what each figure shows: the
    chapter gives every figure cell ``"mystnb": {"image": {"alt": "..."}}`` in its metadata."""
    _open(browser, f"{server}/{page}.html")
    missing = browser.execute_script(
        "return [...document.querySelectorAll('.cell_output img')]"
        ".filter(i => !(i.getAttribute('alt') || '').trim())"
        ".map(i => { const c = i.closest('.cell'), input = c && c.querySelector('.cell_input');"
        "  return input ? input.textContent.trim().slice(0, 60) : i.src.split('/').pop(); })")
    assert not missing, f"{page}: figure outputs without alt text: {missing}"
