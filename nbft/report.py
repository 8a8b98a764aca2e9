"""Reports: the tables 99_report shows, and a run's index page.

``stage_table`` / ``compare_table`` / ``key_figures`` / ``params_diff`` are 99_report's tables (every value
written by ``fmt``); ``resolve_runs`` / ``load_runs`` find the runs to report. ``write_index(run_dir)``
renders ``runs/<run>/index.html`` from the Jinja template ``templates/run_index/index.html.j2``:
every stage's report with its headline metrics (the stage table's ``headline``), escaped.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path

import yaml

from . import files, params, runs
from .runs import flatten, headline

TEMPLATES = Path(__file__).parent / "templates"


# ---------------------------------------------------------------- metric tables

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
        path = Path(os.path.expanduser(n))  # ~nosuchuser stays as written
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
    out = {}
    for f in folders:
        f = Path(f)
        profile = yaml.safe_load((f / "params.yaml").read_text()) if (f / "params.yaml").exists() else {}
        out[f.name] = {"path": f, "metrics": runs.upgrade(runs.read_json(f / "metrics.json", {}) or {}),
                       "params": profile or {}, "status": runs.read_json(f / "status.json", {}) or {}}
    return out


def report_stages(loaded: dict[str, dict], only=()) -> list[str]:
    """Stages some run recorded, pipeline order, 99_report itself left out; ``only`` narrows them."""
    recorded = {s for r in loaded.values() for s in r["metrics"]}
    stages = [s for s in params.STAGES if s in recorded and s != "99_report"]
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
    rows = []
    for name, r in loaded.items():
        for s in stages:
            page = r["path"] / f"{s}.html"
            if page.exists():
                rows.append({"run": name, "stage": s, "report": os.path.relpath(page, base)})
    return rows


def links_html(links: list[dict]) -> str:
    """``stage_links`` rows as an HTML list of links (run names and paths escaped)."""
    import html

    return "<ul>" + "".join(f"<li>{html.escape(r['run'])} · <a href='{html.escape(r['report'], quote=True)}'>"
                            f"{html.escape(r['stage'])}</a></li>" for r in links) + "</ul>"


def check_inputs(p: params.ReportParams) -> None:
    """Before any notebook runs: every run named in ``compare_runs`` exists and has metrics, and every stage named
    in ``stages`` was recorded by one of them."""
    if p.compare_runs:
        try:
            loaded = load_runs(resolve_runs(p.compare_runs))
        except FileNotFoundError as e:
            raise params.ParamError(f"99_report.{e}") from None
        try:
            report_stages(loaded, p.stages)
        except ValueError as e:
            raise params.ParamError(f"99_report.{e}") from None


def metrics(loaded: dict[str, dict], stages: list[str], tables: list) -> dict:
    """99_report's section of metrics.json (with ``findings`` added by the notebook)."""
    return {"compare_runs": list(loaded), "stages": stages, "n_tables": len(tables)}


def findings(loaded: dict[str, dict], stages: list[str], diff: list[dict]) -> list[str]:
    """What 99_report can say from the recorded numbers alone: what it compares, what differs, what is missing."""
    out = [f"{len(loaded)} run(s) compared over {len(stages)} stage(s): {', '.join(loaded)}."]
    if len(loaded) > 1:
        out.append(f"{len(diff)} parameter(s) differ between the runs"
                   + (f": {', '.join(r['parameter'] for r in diff[:6])}." if diff else "."))
    for name, r in loaded.items():
        missing = [s for s in stages if s not in r["metrics"]]
        silent = [s for s in stages if s in r["metrics"] and not r["metrics"][s].get("findings")]
        if missing:
            out.append(f"Run {name} has no metrics for {', '.join(missing)}.")
        if silent:
            out.append(f"Run {name}: {', '.join(silent)} recorded no findings.")
    return out


# ---------------------------------------------------------------- a stage report's parameters

def _shown_value(value, run_dir) -> str:
    """A parameter's value as its report shows it: a Python literal, absolute paths as ``files.relative`` writes
    them."""
    if isinstance(value, str):
        return repr(files.relative(value, run_dir))
    if isinstance(value, list):
        return repr([files.relative(v, run_dir) if isinstance(v, str) else v for v in value])
    return repr(value)


def parameters_html(stage: str, p, run_dir: str | Path | None = None) -> str:
    """The parameters a stage ran with, as the first thing its report shows: a table of those whose value differs
    from the default of the stage's dataclass (parameter, value, default, what it does), then every parameter in a
    collapsed ``<details>`` element. Everything is escaped (values are user text); an absolute path shows relative
    to the run folder ``run_dir`` or the project, else as its bare name (``files.relative``)."""
    import html

    defaults = type(p)()
    fields = dataclasses.fields(p)

    def table(chosen) -> str:
        rows = "".join(f'<tr><td class="v">{html.escape(f.name)}</td>'
                       f'<td class="v">{html.escape(_shown_value(getattr(p, f.name), run_dir))}</td>'
                       f'<td class="v">{html.escape(_shown_value(getattr(defaults, f.name), run_dir))}</td>'
                       f"<td>{html.escape(f.metadata.get('help', ''))}</td></tr>" for f in chosen)
        return ("<table><thead><tr><th>parameter</th><th>value</th><th>default</th><th>what it does</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")

    changed = [f for f in fields if getattr(p, f.name) != getattr(defaults, f.name)]
    title = f"<p><strong>Parameters of {html.escape(stage)}</strong>: " + (
        f"{len(changed)} of {len(fields)} differ from the defaults</p>{table(changed)}" if changed
        else f"all {len(fields)} at their defaults</p>")
    return (f'<div class="nbft-parameters">{PARAMETERS_CSS}{title}<details><summary>all {len(fields)} parameters'
            f"</summary>{table(fields)}</details></div>")


#: The parameters table's look (JupyterLab's own style right-aligns table cells).
PARAMETERS_CSS = ("<style>.nbft-parameters th, .nbft-parameters td {text-align: left; vertical-align: top}"
                  " .nbft-parameters td.v {font-family: monospace; white-space: pre-wrap; word-break: break-word}"
                  "</style>")


# ---------------------------------------------------------------- the run's index page

def point_result(exit_code: int | None) -> str:
    """A sweep point's result from its ``nbft run`` exit code: ok, failed, interrupted (a signal: 128 + its
    number), or not run (the sweep stopped before it: no exit code)."""
    if exit_code is None:
        return "not run"
    return "ok" if exit_code == 0 else "interrupted" if exit_code > 128 else "failed"


def index_page(run_dir: str | Path) -> str:
    """The HTML of ``runs/<run>/index.html`` (see ``write_index``)."""
    import jinja2

    run_dir = Path(run_dir)
    metrics = runs.upgrade(runs.read_json(run_dir / "metrics.json", {}) or {})
    status = runs.read_json(run_dir / "status.json", {}) or {}
    names = [s for s in params.STAGES if s in metrics or (run_dir / f"{s}.html").exists() or s in status.get("stages", {})]
    stages = []
    for s in names:
        secs = status.get("seconds", {}).get(s)
        stages.append({"stage": s, "report": f"{s}.html" if (run_dir / f"{s}.html").exists() else "",
                       "status": status.get("stages", {}).get(s, ""), "time": "" if secs is None else f"{secs:.0f} s",
                       "headline": [(k, fmt(v)) for k, v in headline(s, metrics.get(s, {})).items()]})
    sweep = runs.read_json(run_dir / "sweep.json", None) or {}
    points = [{"run": pt["run"], "values": ", ".join(f"{k}={v}" for k, v in pt["values"].items()),
               "result": point_result(pt.get("exit_code"))} for pt in sweep.get("points", [])]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES / "run_index")), autoescape=True)
    return env.get_template("index.html.j2").render(
        name=run_dir.name, state=str(status.get("state", "unknown")), stages=stages, points=points,
        files=[f for f in ("params.yaml", "metrics.json", "env.json", "sweep.json") if (run_dir / f).exists()])


def write_index(run_dir: str | Path) -> Path:
    """``runs/<run>/index.html``: a plain page (no script) linking every stage report of the run,
    its status, time and headline metrics, and the parameters used."""
    return files.write_atomic(Path(run_dir) / "index.html", index_page(run_dir))
