"""The documentation site: it builds with ``mkdocs build --strict``, and a real browser sees the notebooks.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium) opens the built
site's page of each notebook, served over HTTP from this process, and checks what a reader would see: the
shape walk's text and the training-curve image, loaded with a non-zero size. Every page's links and
images are then followed: a broken internal link, image or anchor fails. Locally the browser test is
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
                 "errors/index.html", "weights/index.html", "recipes/index.html", "exercises/index.html"]:
        assert (site / page).is_file(), page
    for name in NOTEBOOKS.values():
        assert (site / "notebooks" / Path(name).stem / "index.html").is_file(), name


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
    print(f"{url}: shape walk rendered; training curves {curves[0][2]}x{curves[0][3]} px")


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
    for package in ("mkdocs", "mkdocs-material", "mkdocs-jupyter", "selenium"):
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
