"""The ``nbft`` command: run the notebook pipeline with Papermill, sweep a grid, list runs, show parameters.

    nbft run [--params FILE] [--only STAGE ...] [--name NAME] [--set key=value ...]
    nbft sweep [--params FILE] --grid key=v1,v2 [--grid ...] [--only STAGE ...] [--name NAME] [--set ...]
    nbft list
    nbft params [--params FILE] [--set key=value ...] [--defaults] [--sync-notebooks]
    nbft vendor                       fetch the offline widget renderer (make install does it)
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path

from . import params as P
from . import runs

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def notebooks_dir() -> Path:
    root = runs.project_root()
    if root is None:
        raise SystemExit("nbft: run this from inside the nbft project (a folder with notebooks/ and params/)")
    return root / "notebooks"


def _stage_names(only: list[str] | None) -> list[str]:
    if not only:
        return list(P.STAGES)
    out = []
    for s in only:
        match = [k for k in P.STAGES if k == s or k.split("_", 1)[-1] == s or k.startswith(s + "_")]
        if len(match) != 1:
            close = difflib.get_close_matches(s, list(P.STAGES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; stages: {', '.join(P.STAGES)}"
            raise P.ParamError(f"--only {s}: unknown stage{hint}")
        out.append(match[0])
    return [s for s in P.STAGES if s in out]


#: (stage, parameter) -> the values that are names, not paths; any other value is a path to make absolute.
PATH_PARAMETERS = {("04_rlhf", "policy"): ("auto", "base"), ("04_rlhf", "preferences"): ("builtin",),
                   ("05_rag_vs_ft", "knowledge_base"): ("builtin",), ("05_rag_vs_ft", "questions"): ("",)}
#: (stage, parameter) that name a dataset: a local file (made absolute), or a built-in or hub name (kept).
DATASET_PARAMETERS = (("01_data_prep", "dataset"), ("06_classify", "source_data"), ("06_classify", "target_data"))
#: (stage, parameter) that name a model: a local folder (made absolute), or a built-in name or hub id (kept).
MODEL_PARAMETERS = (("07_distill", "teacher"), ("07_distill", "student"))


def _absolutize_paths(resolved: dict) -> None:
    """Relative data paths are relative to where ``nbft run`` was started; notebooks run elsewhere."""
    from . import data

    for stage, key in DATASET_PARAMETERS:
        value = getattr(resolved[stage], key)
        if value and data.is_file_spec(value):
            setattr(resolved[stage], key, str(Path(value).expanduser().resolve()))
    for (stage, key), names in PATH_PARAMETERS.items():
        value = getattr(resolved[stage], key)
        if value not in names:
            setattr(resolved[stage], key, str(Path(value).expanduser().resolve()))
    for stage, key in MODEL_PARAMETERS:
        value = getattr(resolved[stage], key)
        if value not in ("auto", "base") and Path(value).expanduser().is_dir():
            setattr(resolved[stage], key, str(Path(value).expanduser().resolve()))
    rp = resolved["99_report"]  # run folders given as paths; bare names stay names under runs/
    rp.compare_runs = [str(Path(r).expanduser().resolve()) if Path(r).expanduser().is_dir() else r
                       for r in rp.compare_runs]


def preflight(resolved: dict, stages: list[str]) -> None:
    """Check what can be checked before any notebook runs: the model spec, then each stage's own inputs
    (its module's ``check_inputs``: data files, preference pairs, documents and questions, runs to compare)."""
    from . import classify, data, distill, knowledge, models, report, rlhf

    checks = {"01_data_prep": data.check_inputs, "04_rlhf": rlhf.check_inputs,
              "05_rag_vs_ft": knowledge.check_inputs, "06_classify": classify.check_inputs,
              "07_distill": distill.check_inputs, "99_report": report.check_inputs}
    models.resolve(resolved[stages[0]].model)
    for stage in stages:
        if stage in checks:
            checks[stage](resolved[stage])


def _export_html(nb_path: Path) -> Path:
    from . import export

    return export.export_html(nb_path)


def _fmt(v, depth: int = 0) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        if depth:
            return "{…}"
        return "{" + ", ".join(f"{k}: {_fmt(x, 1)}" for k, x in list(v.items())[:6]) + (", …" if len(v) > 6 else "") + "}"
    if isinstance(v, list):
        return f"[{len(v)} items]"
    return str(v)


def print_summary(run_dir: Path, stages: list[str]) -> None:
    metrics = runs.read_json(run_dir / "metrics.json", {})
    print(f"\nrun: {run_dir}")
    for s in stages:
        html = run_dir / f"{s}.html"
        print(f"  report {s}: {html if html.exists() else '(none)'}")
    for s in stages:
        for k, v in metrics.get(s, {}).items():
            if k != "findings":
                print(f"  {s}.{k} = {_fmt(v)}")
    for s in stages:
        if metrics.get(s, {}).get("findings"):
            print(f"\n{s} findings:")
            for f in metrics[s]["findings"]:
                print(f"  - {f}")


def _prepare(params_file, sets, only, name) -> tuple[dict, list[str], Path]:
    """Validate everything a run needs before anything is written: parameters, stages, run name, inputs."""
    resolved = P.resolve(params_file, sets)
    stages = _stage_names(only)
    _absolutize_paths(resolved)
    name = name or resolved[stages[0]].run_name or None
    prefix = Path(params_file).stem if params_file else "default"
    run_dir = runs.unique_run_dir(name, prefix=prefix)
    preflight(resolved, stages)
    return resolved, stages, run_dir


def _kernel_env(runs_root: Path) -> None:
    # The kernel must be this environment's python, and must find the run folders.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ[runs.RUNS_ENV] = str(runs_root)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def execute(resolved: dict, stages: list[str], run_dir: Path, progress: bool = True, verbose: bool = False,
            label: str = "nbft run") -> int:
    """Execute ``stages`` with Papermill into a new ``run_dir``: executed notebooks, offline HTML reports,
    status.json after every stage and ``index.html``. Returns the exit code (0, or EXIT_FAILED)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from . import report

    nb_dir = notebooks_dir()
    run_dir.mkdir(parents=True, exist_ok=True)  # new: _prepare / unique_run_dir checked it was free
    for p in resolved.values():
        p.run_name = run_dir.name
    (run_dir / "params.yaml").write_text(P.to_yaml(resolved))
    runs.write_env(run_dir, resolved[stages[0]])
    runs.write_status(run_dir, state="running", stages={s: "pending" for s in stages}, started=time.time())
    _kernel_env(run_dir.parent)
    print(f"{label}: {run_dir} ({len(stages)} stage{'s' * (len(stages) > 1)}: {', '.join(stages)})", flush=True)

    t_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        src = nb_dir / f"{stage}.ipynb"
        out = run_dir / f"{stage}.ipynb"
        print(f"[{i}/{len(stages)}] {stage} ...", flush=True)
        runs.write_status(run_dir, stages={stage: "running"})
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(out), parameters=dataclasses.asdict(resolved[stage]),
                                kernel_name="python3", progress_bar=progress, cwd=str(nb_dir),
                                log_output=verbose)
        except PapermillExecutionError as e:
            html = _export_html(out) if out.exists() else None
            where = f"cell {e.cell_index} (In [{e.exec_count}])"
            runs.write_status(run_dir, state="failed", stages={stage: "failed"}, failed_stage=stage,
                              failed_cell=e.cell_index, error=f"{e.ename}: {e.evalue}")
            report.write_index(run_dir)
            print(f"{label}: FAILED in notebook {stage}.ipynb, {where}: {e.ename}: {e.evalue}", file=sys.stderr)
            print(f"  partial executed notebook: {out}" + (f"\n  partial report: {html}" if html else ""), file=sys.stderr)
            return EXIT_FAILED
        except Exception as e:  # kernel died, notebook missing, ...
            runs.write_status(run_dir, state="failed", stages={stage: "failed"}, failed_stage=stage,
                              error=f"{type(e).__name__}: {e}")
            report.write_index(run_dir)
            print(f"{label}: FAILED in notebook {stage}.ipynb: {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_FAILED
        _export_html(out)
        secs = time.perf_counter() - t0
        runs.write_status(run_dir, stages={stage: "ok"}, seconds={stage: round(secs, 1)})
        report.write_index(run_dir)
        print(f"[{i}/{len(stages)}] {stage} ok ({secs:.0f} s)", flush=True)
    runs.write_status(run_dir, state="ok", total_seconds=round(time.perf_counter() - t_all, 1))
    report.write_index(run_dir)
    print_summary(run_dir, stages)
    return 0


def cmd_run(args) -> int:
    try:
        resolved, stages, run_dir = _prepare(args.params, args.set, args.only, args.name)
    except (P.ParamError, FileExistsError, ValueError) as e:
        print(f"nbft run: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return execute(resolved, stages, run_dir, args.progress, args.verbose)


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """``["key=v1,v2", ...]`` -> {key: [v1, v2], ...}; each value is later parsed like ``--set``."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key, vals = key.strip(), [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise P.ParamError(f"--grid {spec!r}: expected key=value1,value2")
        if key in grid:
            raise P.ParamError(f"--grid {key}: given twice")
        grid[key] = vals
    return grid


def _point_name(sweep: str, point: dict[str, str]) -> str:
    tag = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items())
    return f"{sweep}__" + re.sub(r"[^A-Za-z0-9_.=-]+", "-", tag)


def cmd_sweep(args) -> int:
    """One run per grid point (every combination), then one comparison report over them."""
    import itertools

    try:
        grid = parse_grid(args.grid)
        if not grid:
            raise P.ParamError("--grid: give at least one key=value1,value2")
        sweep_dir = runs.unique_run_dir(args.name, prefix=(Path(args.params).stem if args.params else "default") + "-sweep")
        # every point is validated (parameters, inputs, a free run name) before anything runs
        planned = [(point, *_prepare(args.params, args.set + [f"{k}={v}" for k, v in point.items()], args.only,
                                     _point_name(sweep_dir.name, point)))
                   for point in (dict(zip(grid, combo)) for combo in itertools.product(*grid.values()))]
        names = [run_dir.name for *_, run_dir in planned]
        if len(set(names)) != len(names):
            raise P.ParamError(f"--grid: two points give the same run name ({', '.join(names)})")
        report_params = P.resolve(args.params, args.set)["99_report"]
    except (P.ParamError, FileExistsError, ValueError) as e:
        print(f"nbft sweep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    print(f"nbft sweep: {len(planned)} runs over {', '.join(grid)} -> {sweep_dir}", flush=True)
    codes = {}
    for n, (point, resolved, stages, run_dir) in enumerate(planned, 1):
        label = f"nbft sweep [{n}/{len(planned)}] " + " ".join(f"{k}={v}" for k, v in point.items())
        codes[run_dir.name] = execute(resolved, stages, run_dir, args.progress, args.verbose, label=label)
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "grid": grid, "params": args.params, "set": args.set, "only": args.only,
        "points": [{"run": run_dir.name, "values": point, "exit_code": codes[run_dir.name]}
                   for point, *_, run_dir in planned]}, indent=2) + "\n")
    done = [run_dir.name for *_, run_dir in planned if (run_dir / "metrics.json").exists()]
    if not done:
        print("nbft sweep: no run recorded any metrics; no comparison report", file=sys.stderr)
        return EXIT_FAILED
    report_params.compare_runs = done
    code = execute({"99_report": report_params}, ["99_report"], sweep_dir, args.progress, args.verbose,
                   label="nbft sweep: comparison report")
    print(f"nbft sweep: comparison report {sweep_dir / '99_report.html'}, index {sweep_dir / 'index.html'}")
    return EXIT_FAILED if code or any(codes.values()) else 0


def cmd_vendor(args) -> int:
    from . import export

    try:
        for package, path in export.vendor().items():
            print(f"{package}: {path}")
    except OSError as e:
        print(f"nbft vendor: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_list(args) -> int:
    rows = runs.list_runs()
    if not rows:
        print(f"no runs under {runs.runs_root()}")
        return 0
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        head = "  ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items())
        print(f"{r['name']:<{w}}  {r['state']:<8}  {r['stages']:<24}  {head}")
    return 0


def cmd_params(args) -> int:
    """Resolved parameters as YAML, each line with its help text (``--defaults``: the dataclass defaults)."""
    if args.sync_notebooks:
        return sync_notebooks()
    try:
        resolved = P.resolve(None if args.defaults else args.params, [] if args.defaults else args.set)
    except P.ParamError as e:
        print(f"nbft params: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    header = ["# The main job: the real default model (SmolLM2-135M-Instruct) on CPU.",
              "# Every parameter with its default (generated: nbft params --defaults > params/default.yaml).", ""]
    try:
        print("\n".join(header if args.defaults else []) + P.to_yaml(resolved, comments=True), end="")
    except BrokenPipeError:
        pass
    return 0


def sync_notebooks() -> int:
    """Rewrite the ``parameters`` cell of every stage notebook from its dataclass (after a field changes)."""
    import nbformat

    for stage in P.STAGES:
        path = notebooks_dir() / f"{stage}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        if len(cells) != 1:
            print(f"nbft params: error: {path}: expected one cell tagged 'parameters', found {len(cells)}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        source = P.parameters_cell(stage)
        if cells[0].source != source:
            cells[0].source = source
            nbformat.write(nb, path)
            print(f"updated {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nbft", description="Jupyter-native fine-tuning lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the notebook pipeline into runs/<name>/")
    r.add_argument("--params", default="params/default.yaml", help="parameter profile (YAML)")
    r.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (e.g. 01_data_prep or sft)")
    r.add_argument("--name", help="run folder name (must not exist yet)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter: key=value or section.key=value (repeatable)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no per-cell progress bar")
    r.add_argument("--verbose", action="store_true", help="stream notebook output to the terminal")
    r.set_defaults(fn=cmd_run)
    sw = sub.add_parser("sweep", help="one run per grid point, then one comparison report")
    sw.add_argument("--params", default="params/default.yaml", help="parameter profile (YAML)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a parameter and its values (repeatable: every combination runs)")
    sw.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages at each point")
    sw.add_argument("--name", help="sweep name (its runs are <name>__<key>-<value>)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every point")
    sw.add_argument("--no-progress", dest="progress", action="store_false")
    sw.add_argument("--verbose", action="store_true")
    sw.set_defaults(fn=cmd_sweep)
    vd = sub.add_parser("vendor", help="fetch the widget renderer for offline HTML reports (npm registry, once)")
    vd.set_defaults(fn=cmd_vendor)
    ls = sub.add_parser("list", help="runs with status and headline metrics")
    ls.set_defaults(fn=cmd_list)
    pp = sub.add_parser("params", help="show resolved parameters with help text")
    pp.add_argument("--params", default="params/default.yaml")
    pp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pp.add_argument("--defaults", action="store_true", help="the dataclass defaults (how params/default.yaml is made)")
    pp.add_argument("--sync-notebooks", action="store_true",
                    help="rewrite each notebook's parameters cell from its dataclass")
    pp.set_defaults(fn=cmd_params)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
