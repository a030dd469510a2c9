"""The website as a reader sees it: the whole book built in fast mode, checked in Chromium.

One session-scoped build executes every chapter (a chapter that raises fails the build).
Headless Chromium then opens every page listed in ``_toc.yml`` from a server on 127.0.0.1
and checks it (see ``tests/site_helpers.py``). Screenshots go to ``artifacts/screenshots/``
and each page's load time and figure count to ``artifacts/site_report.json``.

Planted-fault tests copy a built chapter page, break one thing, and show that the checker
reports exactly that kind of fault. Without Chromium and ChromeDriver these tests fail
(``bash tests/setup_browser.sh`` installs them); they never skip.

Set ``MLBOOK_SITE_DIR`` to an already built ``_build/html`` folder to check it instead of
building (for working on the checks themselves; CI always builds).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import figure_audit
from site_helpers import (
    REPO, SiteServer, broken_internal_links, build_site, check_page, executed_notebook, source_warnings,
    expected_colab_url, find_browser, load_config, start_browser, stored_output_problems,
    toc_sources,
)

pytestmark = pytest.mark.timeout(2400)

ARTIFACTS = REPO / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
SOURCES = toc_sources()
CHAPTERS = [s for s in SOURCES if s.endswith(".ipynb")]
_REPORTS: dict[str, dict] = {}
_TIMES: dict[str, float] = {}


def _html(source: str) -> str:
    return source.rsplit(".", 1)[0] + ".html"


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The built website's HTML folder (built once per test session, in fast mode)."""
    override = os.environ.get("MLBOOK_SITE_DIR")
    if override:
        return Path(override).resolve()
    out = tmp_path_factory.mktemp("site")
    ARTIFACTS.mkdir(exist_ok=True)
    start = time.perf_counter()
    try:
        html = build_site(out, ARTIFACTS / "site_build.log")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    _TIMES["build_s"] = round(time.perf_counter() - start, 1)
    print(f"\nbook built in fast mode in {_TIMES['build_s']} s")
    return html


@pytest.fixture(scope="session")
def server(site):
    with SiteServer(site) as running:
        yield running


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    try:
        find_browser()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    driver = start_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()
    if _REPORTS:
        ARTIFACTS.mkdir(exist_ok=True)
        summary = {"timings": _TIMES, "pages": _REPORTS}
        (ARTIFACTS / "site_report.json").write_text(json.dumps(summary, indent=2))


def test_browser_is_installed():
    """The checks need a real browser: missing Chromium is a failure, not a skip."""
    chromium, driver = find_browser()
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "Chromium" in version.stdout, version.stderr


def test_every_toc_page_was_built(site):
    missing = [s for s in SOURCES if not (site / _html(s)).is_file()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"


def test_no_broken_links_between_pages(site):
    assert broken_internal_links(site) == []


def test_build_reports_no_warning_against_the_book(site):
    if "build_s" not in _TIMES:
        pytest.skip("the site was given by MLBOOK_SITE_DIR: no build log of this session to read")
    warnings = source_warnings((ARTIFACTS / "site_build.log").read_text(errors="replace"))
    assert not warnings, "\n".join(warnings)


def test_source_warnings_finds_a_missing_include_and_ignores_kernel_noise():
    log = ("\x1b[91m/x/book/03_bilevel_optimisation.ipynb:40038: WARNING: Object named 'A.b' not found in "
           "include file '/x/a.py'\x1b[39;49;00m\n"
           "[IPKernelApp] WARNING | Kernel is running over TCP without encryption.\n"
           "/x/book/intro.md:12: ERROR: Unknown directive type.\n")
    assert source_warnings(log) == [
        "03_bilevel_optimisation.ipynb:40038: WARNING: Object named 'A.b' not found in include file '/x/a.py'",
        "intro.md:12: ERROR: Unknown directive type."]


def test_math_and_widgets_are_served_by_the_site(site):
    """MathJax, require.js and the widget manager are files of the site, not CDN links."""
    for name in ("mathjax/tex-chtml.js", "vendor/require.js", "vendor/html-manager/embed-amd.js",
                 "site/widgets_offline.js"):
        assert (site / "_static" / name).is_file(), f"_static/{name} is missing from the site"
    page = (site / _html(SOURCES[0])).read_text()
    mathjax = re.findall(r'<script[^>]*src="([^"]*tex-chtml[^"]*)"', page)
    assert mathjax and all("://" not in src for src in mathjax), mathjax


@pytest.mark.parametrize("source", SOURCES)
def test_page_in_browser(source, site, server, browser):
    report = check_page(browser, server.base_url, _html(source), source, screenshot_dir=SCREENSHOTS)
    _REPORTS[source] = report.as_dict()
    print(f"\n{source}: load {report.load_s:.2f} s (ready {report.ready_s:.2f} s), "
          f"{report.figures} figures, {report.math} formulas, {report.exercises} exercises, "
          f"{report.widgets} widgets, {report.requests} requests")
    assert not report.problems, "\n".join(f"[{kind}] {msg}" for kind, msg in report.problems)


# ----------------------------------------------------------------------------------------
# Planted faults: each one must be reported by the checker.
# ----------------------------------------------------------------------------------------
_TRACEBACK_OUTPUT = """
<div class="cell_output docutils container">
<div class="output traceback highlight-ipythontb notranslate"><div class="highlight"><pre><span></span><span class="gt">---------------------------------------------------------------------------</span>
<span class="ne">ValueError</span>                                Traceback (most recent call last)
<span class="ne">----&gt; </span><span class="mi">3</span> <span class="k">raise</span> <span class="ne">ValueError</span><span class="p">(</span><span class="s1">&#39;boom&#39;</span><span class="p">)</span>

<span class="ne">ValueError</span>: boom
</pre></div></div></div>
"""


def _first_paragraph_end(html: str) -> int:
    article = html.index('<article class="bd-article">')
    return html.index("</p>", article) + len("</p>")


def _break_figure(html: str) -> str:
    new, count = re.subn(r'(<img[^>]*src=")([^"]*_images/[^"]+)(")', r"\1\2.missing.png\3", html, count=1)
    assert count == 1, "the chapter page has no figure to break"
    return new


def _raw_formula(html: str) -> str:
    at = _first_paragraph_end(html)
    return html[:at] + "<p>The meta-objective is $\\min_\\phi \\sum_i L_i(\\theta_i)$ here.</p>" + html[at:]


def _drop_mathjax(html: str) -> str:
    new, count = re.subn(r'<script[^>]*src="[^"]*mathjax/tex-chtml\.js"[^>]*></script>', "", html)
    assert count == 1, "the chapter page does not load MathJax"
    return new


def _error_output(html: str) -> str:
    at = html.index('<div class="cell_output docutils container">')
    return html[:at] + _TRACEBACK_OUTPUT + html[at:]


def _dead_colab(html: str) -> str:
    new, count = re.subn(r'(https://colab\.research\.google\.com/github/[^"]*/blob/[^/"]+/)([^"]+\.ipynb)',
                         r"\1book/99_missing_chapter.ipynb", html)
    assert count >= 1, "the chapter page has no Colab link"
    return new


def _open_solution(html: str) -> str:
    new, count = re.subn(r'class="solution dropdown admonition"', 'class="solution admonition"', html)
    assert count >= 1, "the chapter page has no collapsed solution"
    return new


def _offsite_script(html: str) -> str:
    # Another loopback address: off the site for the checker, yet the request never leaves
    # this machine.
    return html.replace("</head>", '<script src="http://127.0.0.2:8999/tracker.js"></script></head>', 1)


_EMPTY_OUTPUT = """
<div class="cell_output docutils container">
<div class="output text_plain highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>
</pre></div></div></div>
"""


def _empty_output(html: str) -> str:
    at = html.index('<div class="cell_output docutils container">')
    return html[:at] + _EMPTY_OUTPUT + html[at:]


def _nan_output(html: str) -> str:
    at = html.index('<div class="cell_output docutils container">')
    return html[:at] + _EMPTY_OUTPUT.replace("<span></span>\n", "<span></span>loss: nan") + html[at:]


def _wide_code(html: str) -> str:
    marker = '<div class="cell_input docutils container">'
    at = html.index(marker)
    at = html.index("<pre><span></span>", at) + len("<pre><span></span>")
    line = "planted = " + repr("x" * 110) + "  # a line far wider than the column\n"
    return html[:at] + line + html[at:]


def _unlabelled_axis_png() -> bytes:
    """A figure with one unlabelled axis, rendered through the audit the build uses."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure_audit.install()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [2, 0, 1])
    ax.set_xlabel("outer step")  # the y axis is left without a label
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _unlabelled_axis(html: str) -> str:
    import base64

    src = "data:image/png;base64," + base64.b64encode(_unlabelled_axis_png()).decode()
    output = html.index('<div class="cell_output docutils container">')
    new, count = re.subn(r'(<img[^>]*src=")([^"]*_images/[^"]+)(")', lambda m: m.group(1) + src + m.group(3),
                         html[output:], count=1)
    assert count == 1, "the chapter page has no output figure to replace"
    return html[:output] + new


PLANTS = {
    "empty-output": (_empty_output, "empty-output"),
    "nan-output": (_nan_output, "nan"),
    "over-wide-code": (_wide_code, "code-width"),
    "unlabelled-axis": (_unlabelled_axis, "axis-label"),
    "broken-figure": (_break_figure, "figure"),
    "raw-formula": (_raw_formula, "math"),
    "mathjax-missing": (_drop_mathjax, "math"),
    "error-output": (_error_output, "error-output"),
    "dead-colab-link": (_dead_colab, "colab"),
    "solution-open": (_open_solution, "exercise"),
    "offsite-request": (_offsite_script, "offsite"),
}


@pytest.fixture(scope="session")
def planted_base(site, server, browser):
    """The chapter page the faults are planted into, checked clean first."""
    assert CHAPTERS, "_toc.yml lists no chapter notebook"
    source = CHAPTERS[0]
    clean = check_page(browser, server.base_url, _html(source), source)
    assert not clean.problems, f"the unplanted page must be clean first: {clean.problems}"
    return source


def _drop_widget_manager(html: str) -> str:
    new, count = re.subn(r'<script[^>]*src="[^"]*html-manager/embed-amd\.js[^"]*"[^>]*></script>', "", html)
    assert count == 1, "the page does not load the widget manager"
    return new


def test_planted_widget_fault_is_reported(site, server, browser):
    """A page whose widget manager does not load shows undrawn widgets: reported."""
    pages = [s for s in CHAPTERS if "widget-view+json" in (site / _html(s)).read_text()]
    if not pages:
        pytest.skip("no chapter has an ipywidgets demo yet")
    original = site / _html(pages[0])
    planted = original.with_name("zz_planted_widget.html")
    planted.write_text(_drop_widget_manager(original.read_text()))
    try:
        report = check_page(browser, server.base_url, str(planted.relative_to(site)), pages[0])
    finally:
        planted.unlink()
    print(f"\nplanted widget fault: {report.problems}")
    assert "widget" in report.kinds(), report.problems


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_fault_is_reported(plant, planted_base, site, server, browser):
    mutate, kind = PLANTS[plant]
    original = site / _html(planted_base)
    planted = original.with_name(f"zz_planted_{plant}.html")
    planted.write_text(mutate(original.read_text()))
    try:
        report = check_page(browser, server.base_url, str(planted.relative_to(site)), planted_base)
    finally:
        planted.unlink()
    kinds = report.kinds()
    print(f"\nplanted {plant}: " + "; ".join(f"[{k}] {m[:120]}" for k, m in report.problems))
    assert kind in kinds, f"planting {plant} was not reported; problems: {report.problems}"
    # The planted fault is the only kind of problem (the clean page had none), except that a
    # missing file or blocked host also shows as a console error.
    assert kinds <= {kind, "console"}, report.problems


def test_chapter_that_raises_fails_the_build(tmp_path):
    """nb_execution_raise_on_error: a chapter with an exception must fail the website build."""
    import nbformat

    book = tmp_path / "book_src"
    (book / "book").mkdir(parents=True)
    shutil.copy(REPO / "_config.yml", book / "_config.yml")
    shutil.copytree(REPO / "book" / "_ext", book / "book" / "_ext")
    shutil.copy(REPO / "book" / "references.bib", book / "book" / "references.bib")
    (book / "book" / "intro.md").write_text("# Intro\n\nA page.\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# 1. Broken\n\n## A\n"),
                nbformat.v4.new_code_cell("raise ValueError('this chapter is broken')")]
    nbformat.write(nb, book / "book" / "01_broken.ipynb")
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/01_broken\n")
    env = dict(os.environ, MLBOOK_VENDOR_DIR=str(REPO / "_build" / ".vendor"))
    result = subprocess.run(["jupyter-book", "build", str(book)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode != 0, "a chapter that raises built without error"
    assert "this chapter is broken" in result.stdout + result.stderr


# ----------------------------------------------------------------------------------------
# What the build stored: stderr (hidden from the page by _config.yml), nan, progress bars.
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", CHAPTERS)
def test_executed_chapter_stores_no_warning_nan_or_progress(source, site):
    path = executed_notebook(site, source)
    assert path.is_file(), f"the build kept no executed notebook at {path}"
    problems = stored_output_problems(json.loads(path.read_text()))
    assert not problems, "\n".join(f"[{kind}] {msg}" for kind, msg in problems)


def test_planted_stored_faults_are_found():
    """Each fault planted into a notebook's outputs is reported, and a clean one is not."""
    import nbformat

    clean = nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="query MSE 0.25 ± 0.01\n")])
    planted = {
        "stderr": nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful\n"),
        "nan": nbformat.v4.new_output("stream", name="stdout", text="loss nan\n"),
        "progress": nbformat.v4.new_output("stream", name="stdout",
                                           text="training:  45%|####      | 45/100 [00:01<00:02]\n"),
        "empty-output": nbformat.v4.new_output("display_data", data={
            "text/plain": "HBox()", "application/vnd.jupyter.widget-view+json":
                {"version_major": 2, "version_minor": 0, "model_id": "0123abcd"}}),
        "error-output": nbformat.v4.new_output("error", ename="ValueError", evalue="boom",
                                               traceback=[]),
    }
    assert stored_output_problems(nbformat.v4.new_notebook(cells=[clean])) == []
    for kind, output in planted.items():
        notebook = nbformat.v4.new_notebook(cells=[clean, nbformat.v4.new_code_cell("x", outputs=[output])])
        found = {k for k, _ in stored_output_problems(notebook)}
        assert kind in found, (kind, found)
    # A kernel may send one print in two pieces (the page joins them, nb_merge_streams): the
    # lone newline is part of the print before it, while a print of nothing but space is not.
    split_print = nbformat.v4.new_code_cell("print(table)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="run  ours\n"),
        nbformat.v4.new_output("stream", name="stdout", text="\n")])
    assert stored_output_problems(nbformat.v4.new_notebook(cells=[split_print])) == []
    blank = nbformat.v4.new_code_cell("print()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="\n")])
    found = {k for k, _ in stored_output_problems(nbformat.v4.new_notebook(cells=[blank]))}
    assert "empty-output" in found
