"""The structure docs/architecture.md describes, checked from the source: an acyclic import graph, no private
names used across modules, no global state changed on import, and notebooks that import their stage module plus
the core and set themselves up with one call."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbft import params

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nbft"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
CORE = {"files", "params", "tasks", "corpora", "models", "data", "train", "evaluate", "scoring", "harness", "judge",
        "runs", "export", "report", "widgets"}
#: stage -> the stage-only modules its notebook imports (the stage table's module and ``also``, less the core)
STAGE_MODULES = {s.name: {s.module, *s.also} - CORE for s in params.STAGE_TABLE}
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def nbft_imports(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(imported nbft module, imported name or "", line) for every import anywhere in a module (function-local
    ones too: that is where cycles hide)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:  # from . import a, b
                out += [(a.name, "", node.lineno) for a in node.names]
            elif node.level == 1 or (node.module or "").startswith("nbft."):
                mod = node.module.removeprefix("nbft.") if node.level == 0 else node.module
                out += [(mod.split(".")[0], a.name, node.lineno) for a in node.names]
            elif node.module == "nbft":
                out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], "", node.lineno) for a in node.names if a.name.startswith("nbft.")]
    return out


def parsed():
    return {m: ast.parse((PACKAGE / f"{m}.py").read_text()) for m in MODULES}


def test_import_graph_is_acyclic():
    graph = {m: sorted({dep for dep, _, _ in nbft_imports(tree) if dep in MODULES and dep != m})
             for m, tree in parsed().items()}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in graph[m]:
            visit(dep, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])
    assert graph["tasks"] == [] and graph["files"] == [] and graph["settings"] == [], "tasks, files, settings: leaves"
    assert graph["params"] == ["files"], "params imports only the leaf files"
    # runs is the floor every stage stands on: run folders, metrics, status; the stage's process-wide settings are
    # kernel's (through the leaf settings), never runs'
    assert set(graph["runs"]) <= {"files", "params", "timing", "models"}, graph["runs"]
    assert not {"train", "evaluate", "tracking", "launch"} & set(graph["runs"]), graph["runs"]
    for m in CORE:  # the core never reaches up into a stage module
        assert not set(graph[m]) & {"sft", "peft", "rlhf", "knowledge", "classify", "messages", "distill", "cli"}, (m, graph[m])


def test_no_private_names_across_modules():
    bad = []
    for m, tree in parsed().items():
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.level == 1 and node.module is None or node.module == "nbft") for a in node.names}
        for dep, name, line in nbft_imports(tree):
            if name.startswith("_") and dep != m:
                bad.append(f"{m}.py:{line}: from .{dep} import {name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{m}.py:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_importing_nbft_changes_no_global_state():
    """Warning filters and the environment are the same before and after importing every nbft module
    (the libraries nbft builds on are imported first: their own import-time changes are not nbft's)."""
    code = f"""
import os, warnings, json
import torch, transformers, peft, trl, datasets, numpy, yaml, jinja2, matplotlib.pyplot, ipywidgets, faiss, papermill
before = (list(map(str, warnings.filters)), dict(os.environ))
import nbft
{"".join(f"import nbft.{m}; " for m in MODULES)}
after = (list(map(str, warnings.filters)), dict(os.environ))
print(json.dumps({{"filters": [f for f in after[0] if f not in before[0]],
                   "env": sorted(k for k in set(before[1]) | set(after[1]) if before[1].get(k) != after[1].get(k))}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed == {"filters": [], "env": []}


def notebook_code(stage: str) -> list[str]:
    nb = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
            and "parameters" not in c.get("metadata", {}).get("tags", [])]


def test_every_notebook_is_a_row_of_the_stage_table_and_every_row_names_what_exists():
    """notebooks/ and the stage table hold the same stages (a notebook outside the table would escape every rule of
    this file); each row's modules exist, its needs are stages, its path parameters and headline keys are its own."""
    assert NOTEBOOKS == sorted(params.STAGES), (
        f"notebooks not in params.STAGE_TABLE: {sorted(set(NOTEBOOKS) - set(params.STAGES))}; "
        f"rows without a notebook: {sorted(set(params.STAGES) - set(NOTEBOOKS))}")
    for s in params.STAGE_TABLE:
        assert (ROOT / s.notebook).is_file()
        assert {s.module, *s.also} <= set(MODULES), (s.name, s.module, s.also)
        assert set(s.needs) <= {*params.STAGES, "*"} - {s.name}, (s.name, s.needs)
        fields = params.field_names(s.params)
        assert all(p.key in fields and p.kind in params.PATH_KINDS for p in s.paths), (s.name, s.paths)
        assert s.headline and len(set(s.headline)) == len(s.headline), s.name
    assert len({s.lane for s in params.STAGE_TABLE}) == len(params.STAGE_TABLE), "lanes: one rank per stage"
    assert all(p.key in params.common_names() for p in params.COMMON_PATHS)


def test_every_name_table_equals_the_table_it_copies_and_every_choice_is_a_name_table():
    """``params.NAME_TABLES``: each copy holds its owner's names in its owner's order (``part``: some of them); and
    every field of every stage's dataclass that has ``choices`` takes them from a registered name table."""
    import dataclasses
    import importlib

    for key, table in params.NAME_TABLES.items():
        if table.owner == "params":
            continue
        module, attr = table.owner.rsplit(".", 1)
        owner = tuple(getattr(importlib.import_module(f"nbft.{module}"), attr))
        if table.part:
            assert set(table.names) <= set(owner), f"params.{key}: {sorted(set(table.names) - set(owner))} not in {table.owner}"
        else:
            assert table.names == owner, f"params.{key} {table.names} != {table.owner} {owner}"
        assert not set(table.extra) & set(owner), (key, table.extra)
    registered = {t.choices for t in params.NAME_TABLES.values()}
    for cls in (params.Common, *(s.params for s in params.STAGE_TABLE)):
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            assert not choices or choices in registered, (
                f"{cls.__name__}.{f.name}: choices {choices} are not a table of params.NAME_TABLES (register them "
                "with params._names, naming the table they copy)")


@pytest.mark.parametrize("stage", list(STAGE_MODULES))
def test_notebook_imports_its_stage_module_plus_the_core_and_sets_up_with_one_call(stage):
    cells = notebook_code(stage)
    trees = [ast.parse(c) for c in cells]
    used = {dep for t in trees for dep, _, _ in nbft_imports(t)}
    assert used <= CORE | STAGE_MODULES[stage], f"{stage} imports {sorted(used - CORE - STAGE_MODULES[stage])}"
    assert STAGE_MODULES[stage] <= used
    assert f'nbft.setup("{stage}", globals())' in cells[0]
    bound = {a.asname or a.name.split(".")[0] for t in trees for n in ast.walk(t)
             if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    clash = bound & set(params.field_names(params.STAGES[stage].params))
    assert not clash, f"{stage}: an import rebinds the parameter {sorted(clash)} before nbft.setup reads it"
    code = "\n".join(cells)
    for copied in ("from_namespace", "seed_everything", "open_run", "pick_device", "pick_precision", "gc.collect"):
        assert copied not in code, f"{stage}: {copied} belongs in nbft (nbft.setup / train.trained / models.release)"
    defs = [n.name for t in trees for n in ast.walk(t) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defs, f"{stage} defines {defs}: logic belongs in its stage module"


#: Third-party packages nbft imports only for optional extras (trackers, 4-bit), not in a default run's kernels.
OPTIONAL_IMPORTS = {"wandb", "mlflow", "trackio", "bitsandbytes"}


def test_precompile_covers_every_package_nbft_imports_and_each_entry_resolves():
    """``nbft precompile`` (the Makefile's install compiles only what it imports): every third-party package an nbft
    module imports and every trl trainer it uses is on ``cli.PRECOMPILE``; and the command itself finds every entry
    (a renamed class would leave its kernels compiling in memory again)."""
    from nbft import cli

    covered = {e.partition(":")[0].split(".")[0] for e in cli.PRECOMPILE}
    names = {e.partition(":")[2] for e in cli.PRECOMPILE}
    stdlib = set(sys.stdlib_module_names)
    packages, trainers = set(), set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                packages |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                packages.add(node.module.split(".")[0])
                if node.module == "trl":
                    trainers |= {a.name for a in node.names if a.name.endswith("Trainer")}
    missing = packages - stdlib - covered - OPTIONAL_IMPORTS - {"nbft", "torch", "numpy", "psutil", "safetensors",
                                                                  "huggingface_hub", "jinja2", "jupyter_client"}
    assert not missing, f"add to nbft.cli.PRECOMPILE: {sorted(missing)}"
    assert trainers and trainers <= names, f"trl trainers not on PRECOMPILE: {sorted(trainers - names)}"
    out = subprocess.run([sys.executable, "-m", "nbft.cli", "precompile"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nbft precompile:" in out.stdout and "not installed" not in out.stdout, out.stdout


def module_map() -> list[tuple[str, set[str]]]:
    """docs/architecture.md's core module map: (module, the modules its "imports" column names), in row order."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Module map", 1)[1].split("\nStages:", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) >= 3 else None
        if m:
            rows.append((m.group(1), set(re.findall(r"`(\w+)`", cells[-1]))))
    return rows


def test_the_module_map_in_docs_says_what_each_core_module_imports_and_rows_only_import_rows_above():
    """docs/architecture.md's module map is true: every module that is not a stage module has a row, its imports
    column is exactly what the module imports, and a row imports only rows above it."""
    graph = {m: {dep for dep, _, _ in nbft_imports(tree) if dep in MODULES and dep != m} for m, tree in parsed().items()}
    stage_modules = {s.module for s in params.STAGE_TABLE} - CORE  # in the Stages table (rag, messages: either)
    helpers = {m for s in params.STAGE_TABLE for m in s.also} - CORE  # a stage's own helpers (feedback: above rlhf)
    rows = module_map()
    names = [m for m, _ in rows]
    missing = set(MODULES) - stage_modules - helpers - {"rag", "messages"} - set(names)
    unknown = set(names) - set(MODULES)
    assert not missing and not unknown and not set(names) & stage_modules, (
        f"rows missing: {sorted(missing)}; rows for no module: {sorted(unknown)}; stage modules: "
        f"{sorted(set(names) & stage_modules)}")
    wrong = {m: (sorted(said), sorted(graph[m])) for m, said in rows if said != graph[m]}
    assert not wrong, f"imports column (said, real): {wrong}"
    for i, (m, said) in enumerate(rows):
        assert said <= set(names[:i]), f"{m} imports {sorted(said - set(names[:i]))}, a row below it"


def test_a_new_stage_is_a_row_its_params_and_its_module(tmp_path, monkeypatch):
    """Issue 34: a stage is added by its row in params.STAGE_TABLE, its parameter dataclass, its module (with
    check_inputs when it reads files), its notebook and params/*.yaml sections (and its tests). A throwaway stage made
    of just those is resolved, has its paths made absolute, waits for what it reads, is checked in preflight and
    shows its headline metrics — no other table in nbft names it."""
    import dataclasses
    import sys
    import types

    from nbft import cli, runs

    @params.params_dataclass
    class DummyParams(params.Common):
        """08_dummy: a stage made for this test."""
        source: str = params._f("builtin", "'builtin' or a file")
        rounds: int = params._f(2, "how many rounds", min=1)

    checked = []
    module = types.ModuleType("nbft.dummy")
    module.check_inputs = lambda p: checked.append(p.source)
    monkeypatch.setitem(sys.modules, "nbft.dummy", module)
    row = params.Stage("08_dummy", DummyParams, "dummy", needs=("02_sft",), lane=9, headline=("score",),
                       paths=(params.PathParam("source", "path", ("builtin",)),))
    monkeypatch.setattr(params, "STAGES", {**params.STAGES, row.name: row})
    monkeypatch.chdir(tmp_path)

    resolved = params.resolve(None, ["08_dummy.source=data/mine.txt", "08_dummy.rounds=3"])
    assert resolved["08_dummy"].rounds == 3 and "08_dummy" in cli._stage_names(["dummy"])
    cli._absolutize_paths(resolved)
    assert resolved["08_dummy"].source == str(tmp_path / "data" / "mine.txt")
    assert cli.needs("08_dummy", ["01_data_prep", "02_sft", "08_dummy"]) == ["02_sft"]
    assert "08_dummy" in cli.needs("99_report", ["02_sft", "08_dummy", "99_report"])
    cli.preflight({"08_dummy": dataclasses.replace(resolved["08_dummy"], model="tiny-llama")}, ["08_dummy"])
    assert checked == [str(tmp_path / "data" / "mine.txt")]
    assert runs.headline("08_dummy", {"score": 0.5, "other": 1}) == {"score": 0.5}
    with pytest.raises(params.ParamError, match="did you mean 'rounds'"):
        params.resolve(None, ["08_dummy.round=3"])
