"""Sphinx extension: serve the website's JavaScript from the site itself, never from a CDN.

The book's pages must render their math and their ipywidgets demos without a network
(see the introduction, "Reading offline"). MathJax comes from the ``sphinx-mathjax-offline``
package. The widget HTML manager and require.js come from the npm registry: on the first
build they are fetched once with ``npm pack`` at pinned versions, their sha512 checked, and
unpacked into a cache under ``_build/`` (or the folder named by ``MLBOOK_VENDOR_DIR``). The
cache is added to ``html_static_path`` as ``_static/vendor/...``.

The files deliberately do not live in a root ``_static/`` folder: Jupyter Book 1 adds every
``.js`` file found there to every page, and the 3.6 MB widget bundle belongs only on pages
that display widgets (myst-nb adds it there, using ``nb_ipywidgets_js`` in ``_config.yml``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

# (npm spec, sha512 of the tarball as npm's "integrity", {file in the tarball: file in the site})
ASSETS = [
    (
        "requirejs@2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        {"package/require.js": "vendor/require.js"},
    ),
    (
        "@jupyter-widgets/html-manager@1.0.15",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        # The bundle loads its icon fonts from its own folder, so the fonts come along.
        {"package/dist/": "vendor/html-manager/", "package/LICENSE": "vendor/html-manager/LICENSE"},
    ),
]
# Source maps are only for debugging the bundle and would double the site's size.
_SKIP_SUFFIXES = (".map",)
_STAMP = "assets.json"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _pack(spec: str, workdir: Path) -> Path:
    """Fetch one package tarball from the npm registry with the ordinary npm client."""
    if shutil.which("npm") is None:
        raise RuntimeError(
            "offline_assets: npm is needed once to fetch the widget manager and require.js "
            f"({spec}); install Node.js/npm, or set MLBOOK_VENDOR_DIR to a folder that holds them"
        )
    result = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(workdir)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"offline_assets: 'npm pack {spec}' failed:\n{result.stderr.strip()}")
    filename = json.loads(result.stdout)[0]["filename"]
    return workdir / filename


def _unpack(tarball: Path, mapping: dict[str, str], static_root: Path) -> None:
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or member.name.endswith(_SKIP_SUFFIXES):
                continue
            for source, target in mapping.items():
                if member.name == source or (source.endswith("/") and member.name.startswith(source)):
                    rest = member.name[len(source):] if source.endswith("/") else ""
                    destination = static_root / (target + rest)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(member) as src, open(destination, "wb") as dst:
                        shutil.copyfileobj(src, dst)


def ensure_assets(cache: Path) -> Path:
    """Make sure ``cache/static/vendor`` holds the pinned assets; return ``cache/static``.

    Used by the book build and by the website tests (introduction, "Reading offline").
    """
    static_root = cache / "static"
    stamp = cache / _STAMP
    wanted = [spec for spec, _, _ in ASSETS]
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return static_root
    if static_root.exists():
        shutil.rmtree(static_root)
    static_root.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec, integrity, mapping in ASSETS:
            tarball = _pack(spec, Path(tmp))
            found = _integrity(tarball)
            if found != integrity:
                raise RuntimeError(
                    f"offline_assets: {spec} has integrity {found}, expected {integrity}; "
                    "refusing to put an unverified file on the website"
                )
            _unpack(tarball, mapping, static_root)
    stamp.write_text(json.dumps(wanted))
    return static_root


def _vendor_cache(app) -> Path:
    override = os.environ.get("MLBOOK_VENDOR_DIR")
    if override:
        return Path(override).resolve()
    return Path(app.srcdir) / "_build" / ".vendor"


_OWN_STATIC = Path(__file__).resolve().parent / "static"


def _on_config_inited(app, config) -> None:
    static_root = ensure_assets(_vendor_cache(app))
    config.html_static_path = list(config.html_static_path) + [str(static_root), str(_OWN_STATIC)]


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    # sphinx-thebe registers its inline configuration script twice under Jupyter Book 1,
    # and the second "const THEBE_JS_URL" is a SyntaxError in every page's console.
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # The copies differ only in filename None versus "" (an inline script either way).
        filename = getattr(script, "filename", script) or ""
        attributes = getattr(script, "attributes", {}) or {}
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    """Register the extension with Sphinx (introduction, "Reading offline")."""
    app.connect("config-inited", _on_config_inited)
    app.connect("html-page-context", _dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
