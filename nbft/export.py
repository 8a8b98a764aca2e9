"""Export: executed notebooks as offline HTML reports, the vendored widget renderer, the URL scan.

An executed notebook becomes one self-contained HTML file (``export_html``): JupyterLab's export
with the widget state embedded and the widget renderer inlined — require.js and
``@jupyter-widgets/html-manager`` (``embed-amd.js``), fetched once from the npm registry into
``NBFT_CACHE/vendor`` by ``vendor()`` (``make install`` does it) and checked against the
registry's sha512. Nothing is loaded from a network when the report is opened:
``external_urls(html)`` lists any script or stylesheet URL that would be (tests assert none).
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from . import files, models

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "nbft_offline"

#: npm package -> (version, file inside the package, sha512 of the tarball as the registry gives it).
#: html-manager 1.x renders ipywidgets 8 state (widget protocol 2).
VENDOR = {
    "requirejs": ("2.3.8", "require.js",
                  "7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw=="),
    "@jupyter-widgets/html-manager": ("1.0.15", "dist/embed-amd.js",
                                      "5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="),
}
REGISTRY = "https://registry.npmjs.org"


def vendor_dir() -> Path:
    return models.cache_dir() / "vendor"


def _vendor_path(package: str) -> Path:
    version, inner, _ = VENDOR[package]
    return vendor_dir() / f"{package.replace('/', '__')}-{version}" / Path(inner).name


def vendor(fetch: bool = True) -> dict[str, Path]:
    """The vendored script files, package -> path; missing ones are fetched from the npm registry
    (when ``fetch``) and checked against the pinned sha512. Raises ``OSError`` naming the package
    when one cannot be had."""
    out = {}
    for package, (version, inner, sha512) in VENDOR.items():
        path = _vendor_path(package)
        if not path.is_file():
            if not fetch:
                raise FileNotFoundError(f"{package} {version} is not vendored yet ({path}): run `nbft vendor`")
            name = package.split("/")[-1]
            url = f"{REGISTRY}/{package}/-/{name}-{version}.tgz"
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    blob = r.read()
            except OSError as e:
                raise OSError(f"cannot fetch {package} {version} from {url}: {e}") from e
            got = base64.b64encode(hashlib.sha512(blob).digest()).decode()
            if got != sha512:
                raise OSError(f"{url}: sha512 {got} does not match the pinned {sha512}")
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                data = tar.extractfile(f"package/{inner}").read()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        out[package] = path
    return out


def _inline_js(text: str) -> str:
    """Script text safe inside an inline <script> element."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.I)


#: Cells whose source the HTML report leaves out (their outputs, if any, stay): the notebook's defaults and the
#: values Papermill injected. The setup cell shows the parameters instead (``report.parameters_html``); the
#: executed .ipynb keeps both cells.
HIDDEN_INPUT_TAGS = ("parameters", "injected-parameters")


def export_html(nb_path: str | Path, out: str | Path | None = None) -> Path:
    """Write the executed notebook as one self-contained HTML file (default: next to it, ``.html``), without the
    source of the parameter cells (``HIDDEN_INPUT_TAGS``).

    Widgets render from the embedded state with the inlined renderer; without a vendored renderer
    (no registry reachable, nothing cached) each widget shows its static fallback instead.
    Nothing is fetched from a CDN either way.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb_path = Path(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    resources: dict[str, Any] = {"nbft_requirejs": "", "nbft_widget_renderer": ""}
    try:
        scripts = vendor()
        resources["nbft_requirejs"] = _inline_js(scripts["requirejs"].read_text(encoding="utf-8"))
        resources["nbft_widget_renderer"] = _inline_js(
            scripts["@jupyter-widgets/html-manager"].read_text(encoding="utf-8"))
    except OSError as e:
        import warnings

        warnings.warn(f"{nb_path.name}: widgets will show their static copies only ({e})", stacklevel=2)
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATES)], template_name=TEMPLATE)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags=set(HIDDEN_INPUT_TAGS)), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    out = Path(out) if out else nb_path.with_suffix(".html")
    return files.write_atomic(out, body)


_TAG = re.compile(r"<(script|link|img|iframe|embed|object|source|video|audio)\b([^>]*)>", re.I)
_ATTR = re.compile(r"""\b(src|href|data)\s*=\s*("([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_CSS_URL = re.compile(r"""@import\s+(?:url\()?\s*['"]?([^'")\s;]+)|url\(\s*['"]?([^'")\s]+)""", re.I)
_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style>", re.I | re.S)


def _external(url: str) -> bool:
    u = url.strip().lower()
    return u.startswith(("http://", "https://", "//", "ftp://"))


def external_urls(text: str) -> list[str]:
    """Every URL in ``text`` (an HTML page) that a browser would fetch from a network to show it:
    script/img/iframe sources, stylesheet links, CSS ``@import`` and ``url()`` in <style> blocks.
    Plain links (<a href>) are not fetched and not listed; CSS comments are skipped."""
    found = []
    for tag, attrs in _TAG.findall(text):
        if tag.lower() == "link" and not re.search(r"rel\s*=\s*['\"]?[^>]*(stylesheet|preload|icon|import)", attrs, re.I):
            continue
        for m in _ATTR.finditer(attrs):
            url = m.group(3) or m.group(4) or m.group(5) or ""
            if _external(url):
                found.append(url)
    for css in _STYLE.findall(text):
        css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
        for a, b in _CSS_URL.findall(css):
            if _external(a or b):
                found.append(a or b)
    return found
