"""Helpers for the website tests: build the book, serve it on 127.0.0.1, check pages in Chromium.

``check_page`` looks at one built page the way a reader's browser shows it and returns a
:class:`PageReport` whose ``problems`` list names every fault found, each as
``(kind, message)`` with ``kind`` one of :data:`PROBLEM_KINDS`. The planted-fault tests in
``tests/test_site.py`` prove that each kind of fault is reported.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

import figure_audit

# MLBOOK_BOOK_ROOT points the checks at another copy of the book (to test the checks themselves).
REPO = Path(os.environ.get("MLBOOK_BOOK_ROOT") or Path(__file__).resolve().parents[1]).resolve()

# Exactly the flags the project uses for headless Chromium; without the networking ones,
# Chromium keeps trying to reach its own services from a machine with no network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WINDOW = (1280, 900)
# The theme's content column reaches its full width (89 characters of code) from 1440 px on;
# code width is judged there: a reader on a narrower screen scrolls whatever we do.
CODE_WINDOW = (1600, 900)
MAX_SCREENSHOT_HEIGHT = 16000

PROBLEM_KINDS = (
    "console", "offsite", "heading", "figure", "math", "error-output", "colab", "exercise",
    "widget", "timeout", "empty-output", "axis-label", "code-width", "progress", "stderr", "nan",
)

# Script and style sources a page may load: its own site, or content embedded in the page.
_LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-extension", "devtools"}


# --------------------------------------------------------------------------------------
# Book layout
# --------------------------------------------------------------------------------------
def load_config(root: Path = REPO) -> dict:
    """The book's ``_config.yml`` as a dict."""
    return yaml.safe_load((root / "_config.yml").read_text())


def toc_sources(root: Path = REPO, strict: bool = True) -> list[str]:
    """Every source file listed in ``_toc.yml`` (root first), as paths with their suffix.

    A listed file that does not exist raises ``FileNotFoundError``, or is left out when
    ``strict`` is false.
    """
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                names.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({key: value for key, value in toc.items() if key != "root"})
    sources = []
    for name in names:
        for suffix in (".ipynb", ".md"):
            if (root / (name + suffix)).is_file():
                sources.append(name + suffix)
                break
        else:
            if not strict:
                continue
            raise FileNotFoundError(f"_toc.yml lists {name!r}, but neither .ipynb nor .md exists")
    return sources


def expected_colab_url(source: str, config: dict | None = None) -> str:
    """The Colab link that the page built from ``source`` must carry, from ``_config.yml``."""
    config = config or load_config()
    repo_url = config["repository"]["url"].rstrip("/")
    owner_repo = urlparse(repo_url).path.strip("/")
    branch = config["repository"].get("branch", "main")
    prefix = (config["repository"].get("path_to_book") or "").strip("/")
    path = f"{prefix}/{source}" if prefix else source
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{owner_repo}/blob/{branch}/{path}"


def build_site(out_dir: Path, log_path: Path, root: Path = REPO, timeout: int = 1500) -> Path:
    """Build the whole book in fast mode into ``out_dir``; return the HTML folder.

    Raises ``RuntimeError`` with the end of the build log when the build fails (a chapter
    that raises fails it: ``nb_execution_raise_on_error`` is set in ``_config.yml``).
    """
    # No MLBOOK_NO_PROGRESS here: the build must leave no progress bar on its own, as a
    # reader's build does (mlbook.progress stays quiet in a notebook executed by nbclient).
    env = {key: value for key, value in os.environ.items() if key != "MLBOOK_NO_PROGRESS"}
    env["MLBOOK_FAST"] = "1"
    # The tests' MPLBACKEND=Agg would reach the kernels and leave every page without figures.
    env.pop("MPLBACKEND", None)
    # Every kernel of the build stamps each figure with its axis-label audit (figure_audit).
    env["IPYTHONDIR"] = str(out_dir / "ipython")
    figure_audit.write_startup(Path(env["IPYTHONDIR"]))
    command = [sys.executable, "-m", "jupyter_book.cli.main", "build", str(root),
               "--path-output", str(out_dir)]
    if shutil.which("jupyter-book"):
        command = ["jupyter-book", "build", str(root), "--path-output", str(out_dir)]
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False)
    html = out_dir / "_build" / "html"
    if result.returncode != 0 or not (html / "index.html").is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}); log {log_path}:\n{tail}")
    return html


_SOURCE_WARNING = re.compile(r"(?:\x1b\[[0-9;]*m)?(?P<where>\S+\.(?:ipynb|md)(?::\d+)?): (?P<kind>WARNING|ERROR): (?P<text>.*)")


def source_warnings(log_text: str) -> list[str]:
    """Sphinx warnings and errors the build reported against the book's own pages (a missing
    ``literalinclude`` object, an unknown reference): each shows on the site as missing content."""
    found = []
    for line in log_text.splitlines():
        match = _SOURCE_WARNING.search(line)
        if match:
            text = re.sub(r"\x1b\[[0-9;]*m", "", match.group("text"))
            found.append(f"{Path(match.group('where')).name}: {match.group('kind')}: {text}")
    return found


def broken_internal_links(html_root: Path) -> list[str]:
    """Links between the site's own pages that point at a missing file (all pages)."""
    problems = []
    for page in sorted(html_root.rglob("*.html")):
        if "_static" in page.parts:
            continue
        text = page.read_text(errors="replace")
        for href in re.findall(r'<a class="reference internal" href="([^"#]*)(?:#[^"]*)?"', text):
            if not href:
                continue
            target = (page.parent / href).resolve()
            if not target.exists():
                problems.append(f"{page.relative_to(html_root)} links to missing {href}")
    return problems


# --------------------------------------------------------------------------------------
# Serving and the browser
# --------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test output should show results, not requests
        pass


class SiteServer:
    """Serve a folder over HTTP on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def find_browser() -> tuple[str, str]:
    """Paths of Chromium and ChromeDriver, or a RuntimeError saying how to install them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise RuntimeError(
            "the website tests need Debian's chromium and chromium-driver packages "
            f"(found chromium={chromium!r}, chromedriver={driver!r}); install them with "
            "`bash tests/setup_browser.sh`"
        )
    return chromium, driver


def start_browser(user_data_dir: Path):
    """Start headless Chromium under Selenium with a fresh profile and console/network logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


# --------------------------------------------------------------------------------------
# Checking one page
# --------------------------------------------------------------------------------------
@dataclass
class PageReport:
    """What the browser saw on one page, and every problem found there."""

    page: str
    url: str
    title: str = ""
    headings: list = field(default_factory=list)
    load_s: float = 0.0
    ready_s: float = 0.0
    figures: int = 0
    math: int = 0
    exercises: int = 0
    solutions: int = 0
    widgets: int = 0
    colab: str = ""
    requests: int = 0
    screenshot: str = ""
    problems: list = field(default_factory=list)

    def kinds(self) -> set:
        return {kind for kind, _ in self.problems}

    def as_dict(self) -> dict:
        return asdict(self)


# Runs in the page once it has loaded: waits for MathJax and the widgets, then reports.
_INSPECT_JS = r"""
const done = arguments[arguments.length - 1];
const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
const widgetScripts = article.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function settle() {
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    try { await window.MathJax.startup.promise; } catch (e) {}
  }
  for (let i = 0; i < 100; i++) {
    const pendingImages = Array.from(article.querySelectorAll("img")).filter((im) => !im.complete).length;
    const widgetViews = article.querySelectorAll(".widget-subarea").length;
    const mathReady = !window.MathJax || !article.querySelector(".math") || article.querySelector("mjx-container");
    if (pendingImages === 0 && widgetViews >= widgetScripts && mathReady) break;
    await sleep(100);
  }
}
function visibleText(root) {
  const clone = root.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight, .cell_input, .jp-OutputArea").forEach((n) => n.remove());
  return clone.textContent;
}
settle().then(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const imgs = Array.from(article.querySelectorAll("img"));
  const mathEls = Array.from(article.querySelectorAll(".math"));
  const solutions = Array.from(article.querySelectorAll(".solution"));
  const colab = Array.from(document.querySelectorAll("a[href]"))
      .map((a) => a.href).filter((h) => h.indexOf("colab.research.google.com") >= 0);
  const outputs = Array.from(article.querySelectorAll(".cell_output"));
  const assets = [];
  document.querySelectorAll("script[src], img[src], iframe[src], link[href]").forEach((el) => {
    if (el.tagName === "LINK" && !/stylesheet|preload|icon|modulepreload|prefetch/.test(el.rel)) return;
    assets.push(el.src || el.href);
  });
  done({
    title: document.title,
    h1: Array.from(article.querySelectorAll("h1")).map((h) => h.textContent.replace(/#$/, "").trim()),
    h2: Array.from(article.querySelectorAll("h2")).map((h) => h.textContent.replace(/#$/, "").trim()),
    loadMs: nav ? nav.loadEventEnd : -1,
    images: imgs.map((im) => ({src: im.currentSrc || im.src, complete: im.complete, width: im.naturalWidth})),
    mathCount: mathEls.length,
    mathUntypeset: mathEls.filter((m) => !m.querySelector("mjx-container")).length,
    mathErrors: article.querySelectorAll("mjx-merror, .MathJax_Error").length,
    mathjaxVersion: window.MathJax && window.MathJax.version ? String(window.MathJax.version) : "",
    visibleText: visibleText(article),
    tracebackOutputs: article.querySelectorAll(".output.traceback, .output.error, .cell_output .traceback").length,
    outputText: outputs.map((o) => o.textContent).join("\n"),
    // An output area that shows nothing: no text, no picture, no control (a stale widget).
    // (The theme's copy button and the widget's data script are not content.)
    emptyOutputs: outputs.map((o) => {
      const shown = o.cloneNode(true);
      shown.querySelectorAll(".copybtn, script, style").forEach((n) => n.remove());
      return shown;
    }).filter((o) => o.textContent.trim() === "" && !o.querySelector(
        "img, svg, canvas, video, iframe, table, input, select, button, mjx-container")).length,
    stderrOutputs: article.querySelectorAll(".cell_output .stderr, .cell_output .output.stderr").length,
    outputImages: Array.from(article.querySelectorAll(".cell_output img")).map((im) => im.currentSrc || im.src),
    colab: colab,
    exercises: article.querySelectorAll(".exercise").length,
    solutions: solutions.map((s) => ({id: s.id, cls: s.className})),
    widgetScripts: widgetScripts,
    widgetViews: article.querySelectorAll(".widget-subarea").length,
    widgetsWithoutFigure: Array.from(article.querySelectorAll(".widget-subarea"))
        .filter((w) => !Array.from(w.querySelectorAll("img")).some((im) => im.naturalWidth > 0)).length,
    pageText: article.textContent,
    assets: assets,
  });
});
"""

_RAW_MATH_PATTERNS = [
    (re.compile(r"\$\$"), "$$"),
    (re.compile(r"\\\(|\\\)"), r"\( or \)"),
    (re.compile(r"\\\[|\\\]"), r"\[ or \]"),
    (re.compile(r"\\begin\{"), r"\begin{"),
    (re.compile(r"\$[^$\n]{0,80}\\[A-Za-z]+[^$\n]{0,80}\$"), "$...\\command...$"),
    (re.compile(r"\$[^$\s][^$\n]{0,40}[_^][^$\n]{0,40}\$"), "$..._...$"),
]
_PROGRESS = re.compile(r"\d+%\|[^|\n]*\||\d+/\d+ \[\d+:\d+<")
_WARNING = re.compile(r"\b\w*Warning: .{0,80}")
_NAN = re.compile(r"(?<![\w.])[-+]?nan(?![\w])", re.I)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^-{20,}\s*\n\w+(Error|Exception)", re.M)


def figure_problems(src: str) -> list[str]:
    """What the figure audit (tests/figure_audit.py) stamped into one output image."""
    import base64
    import urllib.request

    name = src.rsplit("/", 1)[-1][:60] if not src.startswith("data:") else "an inline image"
    if src.startswith("data:"):
        header, _, payload = src.partition(",")
        if "image/png" not in header:
            return []
        data = base64.b64decode(payload) if ";base64" in header else payload.encode()
    elif urlparse(src).scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(src, timeout=30) as response:
                data = response.read()
        except OSError:  # an image that does not load is the "figure" check's finding
            return []
        if not data.startswith(b"\x89PNG"):
            return []
    else:
        return []
    found = figure_audit.audit_of_png(data)
    if found is None:
        return [f"{name}: a figure that was not audited when drawn (built without the figure hook?)"]
    return [f"{name}: {problem}" for problem in found]


# Code blocks that scroll sideways: wider than the column the theme gives them.
_WIDE_CODE_JS = r"""
const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
return Array.from(article.querySelectorAll(".cell_input pre"))
    .filter((pre) => pre.scrollWidth > pre.clientWidth + 2)
    .map((pre) => pre.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a), "").slice(0, 100));
"""


def _solution_state_js(solution_id: str) -> str:
    return (
        "const s = document.getElementById(arguments[0]);"
        "if (!s) return null;"
        "const body = Array.from(s.children).filter((c) => !c.classList.contains('admonition-title'));"
        "const shown = body.some((c) => c.offsetParent !== null && c.getBoundingClientRect().height > 0);"
        "return {shown: shown, cls: s.className};"
    )


def _is_local(url: str, base_netloc: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in _LOCAL_SCHEMES or not parsed.scheme:
        return True
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.netloc == base_netloc


def _drain_logs(driver, kind: str) -> list:
    try:
        return driver.get_log(kind)
    except Exception:  # a driver without that log type: nothing to report
        return []


def check_page(driver, base_url: str, page_html: str, source: str, screenshot_dir: Path | None = None,
               config: dict | None = None, root: Path = REPO) -> PageReport:
    """Open one built page in the browser and check it as a reader would see it.

    ``page_html`` is the page's path in the site (``book/01_x.html``); ``source`` is the
    repository file it was built from (``book/01_x.ipynb``), which sets what is expected:
    notebook pages need a Colab button for that notebook, figures and collapsed solutions.
    """
    config = config or load_config(root)
    url = base_url + page_html
    report = PageReport(page=page_html, url=url)
    problems = report.problems
    base_netloc = urlparse(base_url).netloc
    is_notebook = source.endswith(".ipynb")
    # Numbered notebooks are chapters (sections, figures, exercises); others, like the Results
    # page, are reference pages built from a notebook.
    is_chapter = is_notebook and re.match(r"book/\d\d_", source) is not None

    _drain_logs(driver, "browser")
    _drain_logs(driver, "performance")
    start = time.perf_counter()
    try:
        driver.get(url)
        data = driver.execute_async_script(_INSPECT_JS)
    except Exception as exc:  # a page that never finishes loading is itself the finding
        problems.append(("timeout", f"page did not load and settle: {exc}"))
        return report
    report.ready_s = round(time.perf_counter() - start, 3)
    report.load_s = round(data["loadMs"] / 1000.0, 3) if data["loadMs"] >= 0 else report.ready_s

    # Console: any error the page logged (failed loads, script exceptions).
    for entry in _drain_logs(driver, "browser"):
        if entry.get("level") == "SEVERE":
            problems.append(("console", entry.get("message", "")[:300]))

    # Network: every request the page made must stay on the local server.
    requested = []
    for entry in _drain_logs(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    report.requests = len(requested)
    for request_url in sorted(set(requested) | set(data["assets"])):
        if not _is_local(request_url, base_netloc):
            problems.append(("offsite", f"request leaves the local site: {request_url[:200]}"))

    # Title and headings.
    report.title = data["title"]
    report.headings = data["h1"] + data["h2"]
    if len(data["h1"]) != 1 or not data["h1"][0]:
        problems.append(("heading", f"expected one non-empty h1, found {data['h1']!r}"))
    elif data["h1"][0] not in data["title"]:
        problems.append(("heading", f"window title {data['title']!r} does not name the page {data['h1'][0]!r}"))
    if is_chapter and len(data["h2"]) < 2:
        problems.append(("heading", f"a chapter needs its sections; found h2 {data['h2']!r}"))

    # Figures: every image on the page arrived and decoded.
    report.figures = len(data["images"])
    for image in data["images"]:
        if not image["complete"] or image["width"] <= 0:
            problems.append(("figure", f"image did not load: {image['src'][:200]}"))
    if is_chapter and report.figures == 0:
        problems.append(("figure", "a chapter page shows no figure"))

    # Math: MathJax (from this site) typeset every formula and nothing raw is left.
    report.math = data["mathCount"]
    if data["mathCount"] and not data["mathjaxVersion"]:
        problems.append(("math", "the page has formulas but MathJax did not load"))
    if data["mathUntypeset"]:
        problems.append(("math", f"{data['mathUntypeset']} of {data['mathCount']} formulas were not typeset"))
    if data["mathErrors"]:
        problems.append(("math", f"{data['mathErrors']} formulas show a MathJax error"))
    for pattern, label in _RAW_MATH_PATTERNS:
        match = pattern.search(data["visibleText"])
        if match:
            start_at = max(0, match.start() - 40)
            snippet = data["visibleText"][start_at:match.end() + 40].replace("\n", " ")
            problems.append(("math", f"raw TeX ({label}) left in the text: ...{snippet}..."))

    # Outputs: no error or traceback shown to the reader.
    if data["tracebackOutputs"]:
        problems.append(("error-output", f"{data['tracebackOutputs']} error outputs shown"))
    match = _TRACEBACK.search(data["outputText"])
    if match:
        problems.append(("error-output", f"a traceback is printed in an output: {match.group(0)[:80]!r}"))

    # Empty output areas, progress bars, stderr and nan: nothing a reader cannot use.
    if data["emptyOutputs"]:
        problems.append(("empty-output", f"{data['emptyOutputs']} output areas show nothing"))
    match = _PROGRESS.search(data["outputText"])
    if match:
        problems.append(("progress", f"a progress bar is shown: {match.group(0)!r}"))
    if data["stderrOutputs"]:
        problems.append(("stderr", f"{data['stderrOutputs']} stderr outputs shown"))
    match = _WARNING.search(data["outputText"])
    if match:
        problems.append(("stderr", f"a warning is printed in an output: {match.group(0)!r}"))
    match = _NAN.search(data["outputText"])
    if match:
        at = max(0, match.start() - 40)
        snippet = data["outputText"][at:match.end() + 20].replace("\n", " ")
        problems.append(("nan", f"nan in an output: ...{snippet}..."))

    # Code cells fit the column at the theme's full width: no sideways scrolling.
    driver.set_window_size(*CODE_WINDOW)
    try:
        wide_code = driver.execute_script(_WIDE_CODE_JS)
    finally:
        driver.set_window_size(*WINDOW)
    for line in wide_code:
        problems.append(("code-width", f"a code cell scrolls sideways; its longest line: {line!r}"))

    # Figures: each one was audited when it was drawn, and has labelled axes.
    for src in data["outputImages"]:
        for problem in figure_problems(src):
            problems.append(("axis-label", problem))

    # Colab: notebook pages launch their own notebook from the book's repository.
    links = sorted(set(data["colab"]))
    report.colab = links[0] if links else ""
    if is_notebook:
        expected = expected_colab_url(source, config)
        if links != [expected]:
            problems.append(("colab", f"Colab link(s) {links!r}, expected exactly {expected!r}"))
        for link in links:
            path = link.split("/blob/", 1)[-1].split("/", 1)[-1]
            if not (root / path).is_file():
                problems.append(("colab", f"Colab link points at {path!r}, which is not in the repository"))
    elif links:
        problems.append(("colab", f"a page that is no notebook has Colab links {links!r}"))

    # Exercises: solutions start collapsed and open on a click.
    report.exercises = data["exercises"]
    report.solutions = len(data["solutions"])
    if is_chapter and data["exercises"] < 3:
        problems.append(("exercise", f"a chapter needs at least three exercises, found {data['exercises']}"))
    if is_chapter and len(data["solutions"]) < data["exercises"]:
        problems.append(("exercise", f"{data['exercises']} exercises but {len(data['solutions'])} solutions"))
    for solution in data["solutions"]:
        state = driver.execute_script(_solution_state_js(solution["id"]), solution["id"])
        if state and state["shown"]:
            problems.append(("exercise", f"solution {solution['id']!r} is shown before it is clicked"))
    if data["solutions"]:
        first = data["solutions"][0]["id"]
        clicked = driver.execute_script(
            "const s = document.getElementById(arguments[0]);"
            "const b = s && (s.querySelector('button.toggle-button') || s.querySelector('.admonition-title'));"
            "if (!b) return false; b.scrollIntoView({block: 'center'}); b.click(); return true;", first)
        time.sleep(0.5)  # the toggle animates open
        state = driver.execute_script(_solution_state_js(first), first)
        if not clicked or not state or not state["shown"]:
            problems.append(("exercise", f"solution {first!r} did not open when clicked"))
        else:  # close it again so the screenshot shows the page as a reader first sees it
            driver.execute_script(
                "const s = document.getElementById(arguments[0]);"
                "const b = s.querySelector('button.toggle-button') || s.querySelector('.admonition-title');"
                "b.click();", first)
            time.sleep(0.5)

    # Widgets: every widget view saved in the notebook was drawn by the offline manager.
    report.widgets = data["widgetScripts"]
    if data["widgetViews"] < data["widgetScripts"]:
        problems.append(("widget", f"{data['widgetScripts']} widgets in the page, {data['widgetViews']} drawn"))
    if data["widgetScripts"]:
        # Without a kernel a demo can only show the figure saved at build time; the page
        # must show it and tell the reader where the sliders work.
        if data["widgetsWithoutFigure"]:
            problems.append(("widget", f"{data['widgetsWithoutFigure']} widget demos show no static figure"))
        if "Colab" not in data["pageText"] and "Jupyter" not in data["pageText"]:
            problems.append(("widget", "a page with widget demos does not say to open it in Colab or Jupyter"))

    if screenshot_dir is not None:
        report.screenshot = str(save_screenshot(driver, screenshot_dir / (page_html.replace("/", "__")[:-5] + ".png")))
    # Anything the clicks or the screenshot made the page log counts too.
    for entry in _drain_logs(driver, "browser"):
        if entry.get("level") == "SEVERE":
            problems.append(("console", entry.get("message", "")[:300]))
    return report


# --------------------------------------------------------------------------------------
# Executed notebooks (what the build stored, including what the page hides)
# --------------------------------------------------------------------------------------
def executed_notebook(html_root: Path, source: str) -> Path:
    """The notebook the build executed for ``source`` (``_build/jupyter_execute/...``)."""
    return html_root.parent / "jupyter_execute" / source


def _merged_streams(outputs: list[dict]) -> list[dict]:
    """``outputs`` with consecutive streams of one name joined, as the page shows them
    (``nb_merge_streams`` in ``_config.yml``): a kernel may send one print in two pieces."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else {}
        if (output.get("output_type") == "stream" and previous.get("output_type") == "stream"
                and previous.get("name") == output.get("name")):
            merged[-1] = {**previous, "text": "".join(previous.get("text", "")) + "".join(output.get("text", ""))}
        else:
            merged.append(output)
    return merged


def stored_output_problems(notebook: dict) -> list[tuple[str, str]]:
    """Faults in an executed notebook's stored outputs, as ``(kind, message)``.

    stderr streams (warnings; ``_config.yml`` hides them from the page, so only this finds
    them), errors, ``nan`` in printed results, progress bars, and widget views whose model
    the notebook does not store (drawn as an empty area).
    """
    problems = []
    state = notebook.get("metadata", {}).get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in _merged_streams(cell.get("outputs", [])) if cell.get("cell_type") == "code" else []:
            where = f"cell {index}"
            kind = output.get("output_type")
            if kind == "error":
                problems.append(("error-output", f"{where}: {output.get('ename')}: {output.get('evalue')}"))
                continue
            if kind == "stream":
                text = "".join(output.get("text", ""))
                if output.get("name") == "stderr":
                    problems.append(("stderr", f"{where}: stderr {text.strip()[:160]!r}"))
            else:
                data = output.get("data", {})
                text = "".join(data.get("text/plain", "")) if "text/html" not in data else ""
                view = data.get("application/vnd.jupyter.widget-view+json")
                if view and view.get("model_id") not in state:
                    problems.append(("empty-output", f"{where}: a widget view with no stored model"))
            for pattern, label in ((_PROGRESS, "progress"), (_WARNING, "stderr"), (_NAN, "nan"),
                                   (_TRACEBACK, "error-output")):
                match = pattern.search(text)
                if match:
                    problems.append((label, f"{where}: {match.group(0)[:120]!r}"))
            if kind == "stream" and not text.strip():
                problems.append(("empty-output", f"{where}: an output with only white space"))
    return problems


def save_screenshot(driver, path: Path) -> Path:
    """Save a full-page PNG (up to MAX_SCREENSHOT_HEIGHT pixels tall) of the current page."""
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": WINDOW[0], "height": min(size["height"], MAX_SCREENSHOT_HEIGHT), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
