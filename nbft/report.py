"""Reports: offline HTML exports of executed notebooks, a run's index page, metric tables for 99_report.

An executed notebook becomes one self-contained HTML file (``export_html``): JupyterLab's export
with the widget state embedded and the widget renderer inlined — require.js and
``@jupyter-widgets/html-manager`` (``embed-amd.js``), fetched once from the npm registry into
``NBFT_CACHE/vendor`` by ``vendor()`` (``make install`` does it) and checked against the
registry's sha512. Nothing is loaded from a network when the report is opened:
``external_urls(html)`` lists any script or stylesheet URL that would be (tests assert none).

``write_index(run_dir)`` writes ``runs/<run>/index.html``: every stage's report with its
headline metrics. ``flatten`` / ``stage_table`` / ``compare_table`` are the tables 99_report shows.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

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
    from .models import cache_dir

    return cache_dir() / "vendor"


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


def export_html(nb_path: str | Path, out: str | Path | None = None) -> Path:
    """Write the executed notebook as one self-contained HTML file (default: next to it, ``.html``).

    Widgets render from the embedded state with the inlined renderer; without a vendored renderer
    (no registry reachable, nothing cached) each widget shows its static fallback instead.
    Nothing is fetched from a CDN either way.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb_path = Path(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    resources: dict[str, Any] = {"nbft_requirejs": "", "nbft_widget_renderer": ""}
    try:
        files = vendor()
        resources["nbft_requirejs"] = _inline_js(files["requirejs"].read_text(encoding="utf-8"))
        resources["nbft_widget_renderer"] = _inline_js(
            files["@jupyter-widgets/html-manager"].read_text(encoding="utf-8"))
    except OSError as e:
        import warnings

        warnings.warn(f"{nb_path.name}: widgets will show their static copies only ({e})", stacklevel=2)
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATES)], template_name=TEMPLATE)
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    out = Path(out) if out else nb_path.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


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


# ---------------------------------------------------------------- metric tables

#: stage -> its headline metrics, in order: the run's index.html, 99_report's key figures and ``nbft list``
#: (the first two) show these.
HEADLINE = {
    "01_data_prep": ["n_raw", "n_train", "n_validation", "n_test"],
    "02_sft": ["task_score_before", "task_score_after", "ppl_general_before", "ppl_general_after", "train_seconds"],
    "03_peft": ["n_methods_ok", "adapter_switch_ok", "lora_vs_full.lora_task_score", "lora_vs_full.full_task_score"],
    "04_rlhf": ["rm_accuracy", "winrate_rl_vs_sft", "winrate_dpo_vs_sft", "rl_kl"],
    "05_rag_vs_ft": ["acc.rag.open", "acc.ft.open", "acc.ft_paraphrase.open", "retrieval_ms_p50", "n_questions"],
    "99_report": ["compare_runs", "n_tables"],
}


def flatten(metrics: dict, prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted keys with scalar values (``{"acc": {"rag": {"open": .8}}}`` ->
    ``{"acc.rag.open": .8}``); lists of scalars are kept whole, lists of rows are left out
    (99_report shows those as their own tables)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            if all(not isinstance(x, (dict, list)) for x in v) and k != "findings":
                out[key] = v
        else:
            out[key] = v
    return out


def headline(stage: str, metrics: dict) -> dict[str, Any]:
    """The stage's headline metrics that are present (``HEADLINE``); else its first scalar ones."""
    flat = flatten(metrics)
    keys = [k for k in HEADLINE.get(stage, []) if k in flat]
    if not keys:
        keys = [k for k, v in flat.items() if isinstance(v, (int, float, bool, str))][:4]
    return {k: flat[k] for k in keys}


def fmt(v) -> str:
    """How every report table writes a value: floats to 4 significant digits."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def stage_table(metrics: dict) -> list[dict]:
    """One row per flattened metric of one stage: {"metric", "value"}."""
    return [{"metric": k, "value": fmt(v)} for k, v in flatten(metrics).items()]


def compare_table(runs_metrics: dict[str, dict], stage: str) -> list[dict]:
    """Metric x run for one stage: rows {"metric", <run>: value or "" where that run lacks it}."""
    flats = {name: flatten(m.get(stage, {})) for name, m in runs_metrics.items()}
    keys = dict.fromkeys(k for f in flats.values() for k in f)
    return [{"metric": k, **{name: fmt(f[k]) if k in f else "" for name, f in flats.items()}} for k in keys]


def params_diff(params_by_run: dict[str, dict]) -> list[dict]:
    """The parameters that differ between runs: rows {"parameter": "stage.key", <run>: value}."""
    flat = {name: flatten({s: v for s, v in p.items() if isinstance(v, dict)}) for name, p in params_by_run.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    rows = []
    for k in keys:
        vals = [json.dumps(f.get(k), sort_keys=True, default=str) for f in flat.values()]
        if len(set(vals)) > 1 and not k.endswith(".run_name"):
            rows.append({"parameter": k, **{name: fmt(f.get(k, "")) for name, f in flat.items()}})
    return rows


# ---------------------------------------------------------------- runs to report

def resolve_runs(names, current: str | Path | None = None) -> list[Path]:
    """Run folders for ``names`` (a folder path, or a name under runs/). Empty ``names``: ``current``
    when it has metrics, else the newest run that has. Unknown names fail naming the closest run."""
    import difflib

    from . import runs

    root = runs.runs_root()
    if not names:
        if current is not None and (Path(current) / "metrics.json").exists():
            return [Path(current)]
        found = sorted((d for d in root.glob("*") if (d / "metrics.json").exists() and d != Path(current or "")),
                       key=lambda d: (d / "metrics.json").stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no run with metrics under {root}: run `nbft run` first, or name runs in compare_runs")
        return [found[-1]]
    out = []
    for n in names:
        path = Path(n).expanduser()
        if not path.is_dir():
            path = root / n
        if not (path / "metrics.json").is_file():
            known = sorted(d.name for d in root.glob("*") if (d / "metrics.json").exists()) if root.is_dir() else []
            close = difflib.get_close_matches(str(n), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; runs: {', '.join(known[-8:])}" if known else "")
            raise FileNotFoundError(f"compare_runs: {n!r} is not a run folder with metrics.json under {root}{hint}")
        out.append(path.resolve())
    return out


def load_runs(folders) -> dict[str, dict]:
    """run name -> {"path", "metrics", "params", "status"} read from each run folder."""
    import yaml

    from . import runs

    out = {}
    for f in folders:
        f = Path(f)
        params = yaml.safe_load((f / "params.yaml").read_text()) if (f / "params.yaml").exists() else {}
        out[f.name] = {"path": f, "metrics": runs.read_json(f / "metrics.json", {}) or {},
                       "params": params or {}, "status": runs.read_json(f / "status.json", {}) or {}}
    return out


def report_stages(loaded: dict[str, dict], only=()) -> list[str]:
    """Stages some run recorded, pipeline order, 99_report itself left out; ``only`` narrows them."""
    from .params import STAGES

    recorded = {s for r in loaded.values() for s in r["metrics"]}
    stages = [s for s in STAGES if s in recorded and s != "99_report"]
    stages += sorted(recorded - set(stages) - {"99_report"})
    if only:
        unknown = [s for s in only if s not in stages]
        if unknown:
            raise ValueError(f"stages: {', '.join(unknown)} not recorded by these runs (recorded: {', '.join(stages)})")
        stages = [s for s in stages if s in only]
    return stages


def key_figures(loaded: dict[str, dict], stages) -> list[dict]:
    """Rows {"stage", "run", "metric", "value"}: each stage's headline metrics for every run."""
    rows = []
    for s in stages:
        for name, r in loaded.items():
            for k, v in headline(s, r["metrics"].get(s, {})).items():
                rows.append({"stage": s, "run": name, "metric": k, "value": fmt(v)})
    return rows


def is_number(text) -> bool:
    """Is a table cell (as ``fmt`` wrote it) a plain number (not a bool, not a list)?"""
    if str(text) in ("True", "False", "None", "nan"):
        return False
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def comparison_figure(rows: list[dict], run_names: list[str]):
    """Grouped bars: one panel per stage, one bar per (metric, run), from ``key_figures`` rows."""
    import matplotlib.pyplot as plt
    import numpy as np

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.2), squeeze=False)
    width = 0.8 / max(1, len(run_names))
    for ax, s in zip(axes[0], stages):
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["stage"] == s))
        for j, name in enumerate(run_names):
            vals = {r["metric"]: float(r["value"]) for r in rows if r["stage"] == s and r["run"] == name}
            ax.bar(np.arange(len(metrics)) + j * width, [vals.get(m, np.nan) for m in metrics], width, label=name)
        ax.set_xticks(np.arange(len(metrics)) + width * (len(run_names) - 1) / 2)
        ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=7)
        ax.set_title(s, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def stage_links(loaded: dict[str, dict], stages, base: str | Path) -> list[dict]:
    """Rows {"run", "stage", "report"}: each stage report's path relative to ``base`` (the report's folder)."""
    import os

    rows = []
    for name, r in loaded.items():
        for s in stages:
            page = r["path"] / f"{s}.html"
            if page.exists():
                rows.append({"run": name, "stage": s, "report": os.path.relpath(page, base)})
    return rows


# ---------------------------------------------------------------- the run's index page

def write_index(run_dir: str | Path) -> Path:
    """``runs/<run>/index.html``: a plain page (no script) linking every stage report of the run,
    its status, time and headline metrics, and the parameters used."""
    from . import runs
    from .params import STAGES

    run_dir = Path(run_dir)
    metrics = runs.read_json(run_dir / "metrics.json", {}) or {}
    status = runs.read_json(run_dir / "status.json", {}) or {}
    names = [s for s in STAGES if s in metrics or (run_dir / f"{s}.html").exists() or s in status.get("stages", {})]
    rows = []
    for s in names:
        link = (f"<a href='{html.escape(s)}.html'>{html.escape(s)}</a>" if (run_dir / f"{s}.html").exists()
                else html.escape(s))
        heads = "<br>".join(f"{html.escape(k)} = <b>{html.escape(fmt(v))}</b>" for k, v in headline(s, metrics.get(s, {})).items())
        secs = status.get("seconds", {}).get(s)
        rows.append(f"<tr><td>{link}</td><td>{html.escape(str(status.get('stages', {}).get(s, '')))}</td>"
                    f"<td>{'' if secs is None else f'{secs:.0f} s'}</td><td>{heads}</td></tr>")
    extra = "".join(f"<li><a href='{f}'>{f}</a></li>" for f in ("params.yaml", "metrics.json", "env.json", "sweep.json")
                    if (run_dir / f).exists())
    sweep = runs.read_json(run_dir / "sweep.json", None)
    if sweep:  # a sweep's folder: its points, each run's own index
        points = "".join(
            f"<tr><td><a href='../{html.escape(pt['run'])}/index.html'>{html.escape(pt['run'])}</a></td>"
            f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in pt['values'].items()))}</td>"
            f"<td>{'ok' if pt['exit_code'] == 0 else 'failed'}</td></tr>" for pt in sweep.get("points", []))
        extra += ("</ul><h2>Sweep points</h2><table><thead><tr><th>run</th><th>values</th><th>result</th></tr></thead>"
                  f"<tbody>{points}</tbody></table><ul>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nbft run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} th{{background:#f4f4f4}}</style>
</head><body>
<h1>nbft run <code>{html.escape(run_dir.name)}</code></h1>
<p>state: <b>{html.escape(str(status.get('state', 'unknown')))}</b></p>
<table><thead><tr><th>stage report</th><th>status</th><th>time</th><th>headline metrics</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<ul>{extra}</ul>
</body></html>
"""
    out = run_dir / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
