"""The documentation site: it builds with ``mkdocs build --strict``, and a real browser sees the notebooks.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium) opens the built
site's page of each notebook, served over HTTP from this process, and checks what a reader would see: the
shape walk's text, the training-curve image loaded with a non-zero size, and a link that downloads the
notebook. On the chapter page, choosing a framework's tab switches every tab set, and the network
diagram, the gallery and the confusion matrix load. A table's words are not broken across lines on a
phone-sized screen. Every page's links and images are then followed: a broken internal link, image or
anchor fails. Locally the browser test is
skipped with its reason when Chromium is missing; in CI (``CI=true``, as .ci/run sets) it fails instead.
"""
import functools
import http.server
import re
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse
from urllib.request import urlopen

import pytest

from conftest import ROOT, skip_or_fail
from test_notebooks import NOTEBOOKS
from test_spec import CHAPTER_NCHW, CHAPTER_NHWC

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,2000")


def _unavailable(reason: str):
    skip_or_fail(f"the documentation tools: {reason}")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as ``mkdocs build --strict`` writes it: any warning (a broken link, a page left out of
    the navigation, a missing anchor) fails the build."""
    try:
        import mkdocs  # noqa: F401
        import mkdocs_jupyter  # noqa: F401
        import material  # noqa: F401
    except ImportError as e:
        _unavailable(f"{e.name} is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in ["index.html", "speed/index.html", "reproduce/index.html", "workers/index.html",
                 "errors/index.html", "weights/index.html", "recipes/index.html", "exercises/index.html",
                 "chapter/index.html"]:
        assert (site / page).is_file(), page
    for name in NOTEBOOKS.values():
        assert (site / "notebooks" / Path(name).stem / "index.html").is_file(), name
        assert (site / "notebooks" / Path(name).stem / name).is_file(), f"{name} is not offered for download"


@pytest.fixture(scope="module")
def server(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        _unavailable(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed: pip install -e '.[docs]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


#: For each rendered image: whether the browser finished it and its natural size.
IMAGES_JS = "return Array.from(document.images).map(i => [i.currentSrc.slice(0, 60), i.complete, i.naturalWidth, " \
            "i.naturalHeight, i.closest('.celltag_curves') !== null]);"


@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_notebook_page_in_chromium(framework, server, browser):
    url = urljoin(server, f"notebooks/{Path(NOTEBOOKS[framework]).stem}/")
    browser.get(url)
    assert browser.execute_script("return document.readyState") == "complete"
    text = browser.find_element("tag name", "body").text
    shapes = CHAPTER_NHWC if framework in ("tensorflow", "jax") else CHAPTER_NCHW
    missing = [s for s in shapes if f"output shape: {s}" not in text]
    assert not missing, f"the shape walk is not rendered on {url}: {missing}"
    assert "typed-out model vs the spec's rendering" in text
    images = browser.execute_script(IMAGES_JS)
    curves = [i for i in images if i[4]]
    assert curves, f"no training-curve image on {url}: {images}"
    for src, complete, width, height, _ in curves:
        assert complete and width > 0 and height > 0, (src, complete, width, height)
    downloads = browser.execute_script(DOWNLOADS_JS)
    assert downloads and downloads[0].endswith("/" + NOTEBOOKS[framework]), downloads
    assert_notebook_file(downloads[0], NOTEBOOKS[framework])
    print(f"{url}: shape walk rendered; training curves {curves[0][2]}x{curves[0][3]} px; "
          f"download link {downloads[0].rsplit('/', 1)[1]}")


#: The links that download a file, as the browser resolves them.
DOWNLOADS_JS = "return Array.from(document.querySelectorAll('a[download]')).map(a => a.href);"


def assert_notebook_file(url: str, name: str) -> None:
    """The link serves the stored notebook itself, byte for byte."""
    with urlopen(url, timeout=30) as response:
        assert response.read() == (ROOT / "notebooks" / name).read_bytes(), url


#: Each tab set on the page: the labels of its tabs and the label of the tab shown.
TABS_JS = """return Array.from(document.querySelectorAll('.tabbed-set')).map(set => {
  const labels = Array.from(set.querySelectorAll(':scope > .tabbed-labels > label'));
  const checked = set.querySelector(':scope > input:checked');
  const shown = labels.find(l => l.htmlFor === checked.id);
  const block = Array.from(set.querySelectorAll(':scope > .tabbed-content > .tabbed-block'))
    .find(b => b.offsetParent !== null);
  return [labels.map(l => l.textContent.trim()), shown ? shown.textContent.trim() : null,
          block ? block.innerText : ''];
});"""
#: The framework each tab label names, and a call its code has to make (the framework's own conv layer).
TAB_CODE = {"PyTorch": "nn.Conv2d", "TensorFlow/Keras": "layers.Conv2D", "MXNet Gluon": "nn.Conv2D",
            "JAX/Flax": "nn.Conv"}


def test_chapter_page_tabs_switch_together_and_its_pictures_load(server, browser):
    url = urljoin(server, "chapter/")
    browser.get(url)
    sets = browser.execute_script(TABS_JS)
    assert len(sets) >= 4, f"the block, the model and the training steps have a tab set each on {url}: {sets}"
    for labels, shown, text in sets:
        assert labels == list(TAB_CODE) and shown == "PyTorch" and text, (labels, shown, text[:80])
    assert TAB_CODE["PyTorch"] in sets[0][2]
    for label in ("JAX/Flax", "TensorFlow/Keras"):
        tab = browser.find_element("xpath", f"(//div[contains(@class, 'tabbed-labels')]/label[.='{label}'])[2]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", tab)
        tab.click()  # a tab of the second set: the first set must follow as well as the later ones
        sets = browser.execute_script(TABS_JS)
        assert [shown for _, shown, _ in sets] == [label] * len(sets), sets
        assert TAB_CODE[label] in sets[0][2] and TAB_CODE["PyTorch"] not in sets[0][2], sets[0][2][:300]
    images = {src.rsplit("/", 1)[1]: (complete, width, height)
              for src, complete, width, height in browser.execute_script(
                  "return Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth, i.naturalHeight]);")}
    for picture in ("network.png", "gallery.png", "confusion.png"):
        assert picture in images, f"{picture} is not on {url}: {sorted(images)}"
        complete, width, height = images[picture]
        assert complete and width > 300 and height > 300, (picture, images[picture])
    assert ("notebooks-curves.png" in images) == (ROOT / "docs" / "img" / "notebooks-curves.png").is_file()
    downloads = browser.execute_script(DOWNLOADS_JS)
    assert sorted(d.rsplit("/", 1)[1] for d in downloads) == sorted(NOTEBOOKS.values()), downloads
    for link in downloads:
        assert_notebook_file(link, link.rsplit("/", 1)[1])
    print(f"{url}: {len(sets)} tab sets switch together; " + ", ".join(
        f"{p} {images[p][1]}x{images[p][2]} px" for p in ("network.png", "gallery.png", "confusion.png"))
          + f"; {len(downloads)} notebooks to download")


#: Every word of every visible table cell that the browser laid out over more than one line: words are
#: cut at white space, hyphens and slashes, where a line may properly break.
BROKEN_WORDS_JS = """const broken = [];
for (const cell of document.querySelectorAll('.md-typeset table td, .md-typeset table th')) {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const m of node.data.matchAll(/[^\\s\\/\\-\u2010-\u2014]+/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(m[0]);
    }
  }
}
return [broken, document.querySelectorAll('.md-typeset table td').length];"""


@pytest.mark.parametrize("page", ["exercises/", "chapter/", "recipes/"])
def test_table_words_are_not_broken_on_a_phone(page, server, browser):
    """On a 400-pixel-wide screen a wide table scrolls sideways; its cells keep their words whole."""
    browser.set_window_size(400, 900)
    try:
        browser.get(urljoin(server, page))
        broken, cells = browser.execute_script(BROKEN_WORDS_JS)
    finally:
        browser.set_window_size(1280, 2000)
    assert cells > 0, f"no table on {page}"
    assert not broken, f"{page}: words broken across lines in table cells: {broken[:20]}"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in {"a": "href", "img": "src", "link": "href", "script": "src"}.get(tag, "").split():
            if a.get(key):
                self.links.append(a[key])


def test_no_internal_link_is_broken(server):
    """Crawl the served site from its home page: every internal page, image, stylesheet and anchor exists."""
    pages, seen, broken, anchors = {}, set(), [], []
    queue = [server]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        try:
            with urlopen(url, timeout=30) as response:
                body = response.read()
                kind = response.headers.get_content_type()
        except OSError as e:
            broken.append(f"{url}: {e}")
            continue
        if kind != "text/html":
            continue
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        pages[url] = parser
        for link in parser.links:
            target = urljoin(url, link)
            if urlparse(target).netloc != urlparse(server).netloc or link.startswith("data:"):
                continue
            page, fragment = urldefrag(target)
            queue.append(page)
            if fragment:
                anchors.append((url, page, fragment))
    assert not broken, "\n".join(broken)
    missing = [f"{src} -> {page}#{frag}" for src, page, frag in anchors
               if page in pages and frag not in pages[page].ids]
    assert not missing, "\n".join(missing)
    notebook_pages = [p for p in pages if re.search(r"/notebooks/nin_\w+/$", p)]
    assert len(notebook_pages) == len(NOTEBOOKS), sorted(pages)
    print(f"{len(pages)} pages and {len(seen) - len(pages)} other files crawled, "
          f"{len(anchors)} anchors checked: none broken")


def test_docs_tools_are_declared():
    """CI installs what the site and its browser test need: the docs extra, and Chromium with its driver."""
    text = (ROOT / "pyproject.toml").read_text()
    docs = re.search(r"^docs = \[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    assert docs, "pyproject.toml has no docs extra"
    for package in ("mkdocs", "mkdocs-material", "pymdown-extensions", "mkdocs-jupyter", "selenium"):
        assert f'"{package}' in docs[1], package
    ci = (ROOT / ".ci" / "run").read_text()
    assert "chromium chromium-driver" in ci and "[all,test,docs]" in ci
    assert "[all,test,docs]" in (ROOT / "README.md").read_text()


def test_readme_is_short_and_its_links_exist():
    """The front door: at most ~200 lines, and every file it links to or shows is in the repository."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert "docs/img/first-run.png" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing


def test_readme_shows_what_the_first_run_printed():
    """The README's first run is the one docs/make_pictures.py made, command and output alike."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    record = (ROOT / "docs" / "img" / "first-run.txt").read_text(encoding="utf-8").splitlines()
    shown = re.search(r"It prints:\n\n```text\n(.*?)\n```", readme, re.DOTALL)
    assert shown, "the README shows no output of its first run"
    assert shown[1].splitlines() == [line for line in record[1:] if line and not line.startswith("#")]
    command = " ".join(re.search(r"```bash\n(python -m nin_multi train .*?)\n```", readme, re.DOTALL)[1].split())
    assert command.replace("\\ ", "") + " --no-progress" == record[0].removeprefix("$ ")
