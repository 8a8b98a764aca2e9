"""Parameters: dataclasses, notebook parameter cells and YAML profiles agree; bad input fails clearly."""
import ast
import dataclasses
import json

import papermill
import pytest
import yaml

from nbft import params as P


def parameters_cell(root, stage):
    nb = json.loads((root / "notebooks" / f"{stage}.ipynb").read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{stage}: expected exactly one cell tagged 'parameters'"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("stage", list(P.STAGES))
def test_parameters_cell_mirrors_dataclass(root, stage):
    src = parameters_cell(root, stage)
    assert src == P.parameters_cell(stage), f"{stage}: run `nbft params --sync-notebooks`"
    tree = ast.parse(src)
    cell = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{stage}: only `name = literal` lines"
        cell[node.targets[0].id] = ast.literal_eval(node.value)  # literals only
    for line in src.splitlines():
        assert "#" in line, f"{stage}: every parameter line says what it does: {line!r}"
    expected = P.defaults(stage)
    assert list(cell) == list(expected), f"{stage}: names/order differ from {P.STAGES[stage].params.__name__}"
    assert cell == expected
    # papermill must be able to read every line (it warns and skips what it cannot parse)
    assert set(papermill.inspect_notebook(str(root / "notebooks" / f"{stage}.ipynb"))) == set(expected)


def test_every_notebook_has_a_stage(root):
    stems = sorted(p.stem for p in (root / "notebooks").glob("*.ipynb"))
    assert stems == sorted(P.STAGES)


def test_default_profile_lists_every_parameter_with_its_default(root):
    doc = yaml.safe_load((root / "params" / "default.yaml").read_text())
    assert doc["common"] == dataclasses.asdict(P.Common())
    for stage in P.STAGES:
        expected = {k: v for k, v in P.defaults(stage).items() if k not in P.common_names()}
        assert doc[stage] == expected, stage


@pytest.mark.parametrize("profile", ["default.yaml", "smoke.yaml"])
def test_profiles_resolve(root, profile):
    resolved = P.resolve(root / "params" / profile)
    assert set(resolved) == set(P.STAGES)
    assert len({p.model for p in resolved.values()}) == 1  # common section shared by every stage


def test_smoke_profile_uses_tiny_model(root):
    assert P.resolve(root / "params" / "smoke.yaml")["02_sft"].model == "tiny-llama"


def write(tmp_path, text):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    return f


def test_unknown_key_names_closest_and_line(tmp_path):
    f = write(tmp_path, "common:\n  seed: 1\n02_sft:\n  epochs: 1\n  learnig_rate: 0.1\n")
    with pytest.raises(P.ParamError) as e:
        P.resolve(f)
    msg = str(e.value)
    assert "learnig_rate" in msg and "did you mean 'learning_rate'" in msg and "line 5" in msg and str(f) in msg


def test_unknown_section_names_closest(tmp_path):
    with pytest.raises(P.ParamError, match="did you mean '02_sft'"):
        P.resolve(write(tmp_path, "02_stf:\n  epochs: 1\n"))


def test_wrong_type_names_key_type_and_value(tmp_path):
    with pytest.raises(P.ParamError) as e:
        P.resolve(write(tmp_path, "02_sft:\n  batch_size: eight\n"))
    msg = str(e.value)
    assert "batch_size" in msg and "expected int" in msg and "'eight'" in msg and "line 2" in msg


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(P.ParamError, match="expected int"):
        P.resolve(write(tmp_path, "02_sft:\n  lora_r: true\n"))


def test_int_widens_to_float(tmp_path):
    assert P.resolve(write(tmp_path, "02_sft:\n  epochs: 3\n"))["02_sft"].epochs == 3.0


def test_invalid_choice_is_rejected(tmp_path):
    with pytest.raises(P.ParamError, match="not one of"):
        P.resolve(write(tmp_path, "common:\n  device: gpu\n"))


@pytest.mark.parametrize("key, value", [("seed", 5), ("model", "tiny-llama"), ("save_steps", 0), ("device", "cpu")])
def test_common_key_in_stage_section_is_refused_naming_section_and_key(tmp_path, key, value):
    """A run's params.yaml (what --resume reads) keeps one value of each common key: a per-stage one would be lost."""
    with pytest.raises(P.ParamError) as e:
        P.resolve(write(tmp_path, f"common:\n  seed: 3\n02_sft:\n  epochs: 1\n  {key}: {value}\n"))
    assert str(e.value) == f"{tmp_path / 'p.yaml'} line 5: 02_sft.{key}: a common parameter (one value for every " \
                           "stage): put it under 'common:'"


def test_every_shipped_profile_loads_and_round_trips(root, tmp_path):
    shipped = sorted((root / "params").glob("*.yaml"))
    assert len(shipped) >= 2
    for path in shipped:
        resolved = P.resolve(path)
        again = tmp_path / path.name
        again.write_text(P.to_yaml(resolved))
        assert P.resolve(again) == resolved, path.name


def test_a_profile_that_is_not_utf8_names_file_line_and_column(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"common:\n  seed: 1\n  model: caf\xe9\n")
    with pytest.raises(P.ParamError, match=r"p.yaml line 3: not UTF-8 text \(byte 0xe9 at column 13\)"):
        P.resolve(path)


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(P.ParamError, match="p.yaml line 3: not valid YAML"):
        P.resolve(write(tmp_path, "common:\n  seed: 1\n\tmodel: x\n02_sft:\n  epochs: 1\n"))


def test_set_overrides():
    r = P.resolve(None, ["epochs=3", "common.model=tiny-llama", "01_data_prep.n_examples=50", "run_name=2024"])
    assert r["02_sft"].epochs == 3.0 and r["02_sft"].model == "tiny-llama"
    assert r["01_data_prep"].n_examples == 50 and r["02_sft"].run_name == "2024"


@pytest.mark.parametrize("item, match", [
    ("epoch=3", "did you mean 'epochs'"),
    ("02_sft.lerning_rate=1", "did you mean 'learning_rate'"),
    ("batch_size=big", "expected int"),
    ("epochs", "expected key=value"),
])
def test_set_errors(item, match):
    with pytest.raises(P.ParamError, match=match):
        P.resolve(None, [item])


def test_from_namespace_validates_notebook_values():
    ns = P.defaults("02_sft")
    assert P.from_namespace("02_sft", ns).epochs == ns["epochs"]
    with pytest.raises(P.ParamError, match="lora_r: expected int, got str"):
        P.from_namespace("02_sft", {**ns, "lora_r": "16"})
    with pytest.raises(P.ParamError, match="does not define"):
        P.from_namespace("02_sft", {"model": "x"})


def test_every_field_has_help():
    for cls in (s.params for s in P.STAGES.values()):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_to_yaml_round_trips(tmp_path):
    r = P.resolve(None, ["epochs=3"])
    f = tmp_path / "r.yaml"
    f.write_text(P.to_yaml(r))
    assert P.resolve(f) == r


def test_default_profile_is_what_nbft_params_defaults_prints(root, capsys):
    from nbft import cli

    assert cli.main(["params", "--defaults"]) == 0
    assert capsys.readouterr().out == (root / "params" / "default.yaml").read_text()


def test_bare_set_key_applies_to_every_stage_that_has_it():
    r = P.resolve(None, ["batch_size=2", "02_sft.epochs=3"])
    assert r["02_sft"].batch_size == 2 and r["03_peft"].batch_size == 2
    assert r["02_sft"].epochs == 3.0 and r["03_peft"].epochs == P.PEFTParams().epochs


def test_default_profile_comments_are_each_stages_own_help(root):
    """Bug: help was merged by field name only, so the last stage's wording described every stage's key
    (02_sft.scope read "fine-tuning on the documents trains", 03_peft.epochs "passes over the documents")."""
    section, seen = None, 0
    for line in (root / "params" / "default.yaml").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.rstrip(":")
            continue
        key, comment = line.strip().split(":", 1)[0], line.split("  # ", 1)[1]
        cls = P.Common if section == P.COMMON else P.STAGES[section].params
        assert comment == P.described(cls)[key], (section, key, comment)
        seen += 1
    assert seen == len(P.common_names()) + sum(len(P.field_names(c)) - len(P.common_names()) for c in (s.params for s in P.STAGES.values()))


GROUPS = [P.TrainArgs, P.ScopeArgs, P.LoraArgs, P.EvalArgs]
#: a stage's own field that shares a group field's name, with its own meaning (TRL's name for the same limit)
OWN = {("04_rlhf", "max_length")}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_a_group_field_comes_only_from_its_group(group):
    """A stage has a group's fields only by composing the group (so a function that takes the group can rely on
    every field), and a stage that redeclares one only to change its default keeps the group's help."""
    names = P.field_names(group)
    for stage, cls in ((s.name, s.params) for s in P.STAGE_TABLE):
        mine = [n for n in names if n in P.field_names(cls) and (stage, n) not in OWN]
        if issubclass(cls, group):
            assert mine == names, stage
        else:
            assert not mine, f"{stage} declares {mine} without composing {group.__name__}"
    for cls in (s.params for s in P.STAGES.values()):
        for n in names:
            if issubclass(cls, group):
                assert P.help_text(cls)[n], (cls.__name__, n)


def test_redeclared_default_keeps_the_groups_help():
    assert P.PEFTParams().batch_size == 4 and P.TrainArgs().batch_size == 8
    assert P.help_text(P.PEFTParams)["batch_size"] == P.help_text(P.TrainArgs)["batch_size"]
    assert P.PEFTParams().lora_alpha == 16 and P.LoraArgs().lora_alpha == 32
    assert P.help_text(P.PEFTParams)["lora_alpha"] == P.help_text(P.LoraArgs)["lora_alpha"]
    assert P.help_text(P.RAGParams)["epochs"] != P.help_text(P.PEFTParams)["epochs"]  # redeclared with its own help


def test_functions_take_groups_not_getattr_defaults(root):
    """No nbft function reads a parameter off a stage dataclass with a fallback (the reason fields were copied)."""
    import re

    hits = [f"{f.name}: {line.strip()}" for f in (root / "nbft").glob("*.py")
            for line in f.read_text().splitlines() if re.search(r"getattr\(p, ['\"]", line)]
    assert not hits, hits


#: numeric parameters without a range, and why: any real weight combines adapters (negative ones subtract);
#: a hidden layer counts from the top when negative.
UNBOUNDED = {("03_peft", "combine_weights"), ("06_classify", "feature_layer")}


def test_every_numeric_parameter_has_a_range_that_its_default_meets():
    """Issue 15: ranges declared next to the help text (``_f(min=, gt=, ...)``), shown by ``nbft params``."""
    import typing

    for stage, cls in ((s.name, s.params) for s in P.STAGE_TABLE):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            numeric = hints[f.name] in (int, float) or typing.get_args(hints[f.name]) in ((int,), (float,))
            if numeric and (stage, f.name) not in UNBOUNDED:
                assert P.range_text(f.metadata), f"{stage}.{f.name} has no range"
                assert P.range_text(f.metadata) in P.described(cls)[f.name]
        P.build(stage, P.defaults(stage))  # every default is in its range


def test_redeclared_field_keeps_its_groups_range():
    assert P.range_text(P.SFTParams.__dataclass_fields__["epochs"].metadata) == "(0, 1000]"
    assert P.range_text(P.PEFTParams.__dataclass_fields__["batch_size"].metadata) == ">= 1"
    assert P.range_text({"min": 0, "lt": 1}) == "[0, 1)" and P.range_text({"gt": 0, "max": 1}) == "(0, 1]"


@pytest.mark.parametrize("text, match", [
    ("common:\n  seed: 1\n  seed: 2\n", "line 3: not valid YAML: duplicate key 'seed'"),
    ("02_sft:\n  epochs: 0\n", r"line 2: 02_sft.epochs: 0.0 is out of range: must be in \(0, 1000\]"),
    ("01_data_prep:\n  validation_fraction: 0.5\n  test_fraction: 0.5\n", "sum to less than 1"),
    ("03_peft:\n  methods: [lora, lorra]\n", "methods\\[1\\]: 'lorra' is not one of .*did you mean 'lora'"),
    ("02_sft:\n  learning_rate: .inf\n", "finite"),
])
def test_profile_values_checked_with_their_line(tmp_path, text, match):
    with pytest.raises(P.ParamError, match=match):
        P.resolve(write(tmp_path, text))


@pytest.mark.parametrize("name, ok", [("run-1.a_b", True), ("../x", False), ("a/b", False), (".hidden", False),
                                      ("x" * 100, True), ("x" * 101, False), ("", False), ("a b", False)])
def test_run_names(name, ok):
    if ok:
        assert P.check_run_name(name) == name
    else:
        with pytest.raises(P.ParamError):
            P.check_run_name(name)


def test_notebook_run_name_is_validated_like_the_cli():
    ns = {**P.defaults("01_data_prep"), "run_name": "../../x"}
    with pytest.raises(P.ParamError, match="letters, digits"):
        P.from_namespace("01_data_prep", ns)


@pytest.mark.parametrize("written, value", [("1e-5", 1e-5), ("3E-4", 3e-4), (".5", 0.5), ("2.5e-4", 2.5e-4),
                                            ("1_000", 1000.0), ("5e-4", 5e-4)])
def test_numbers_as_people_write_them(written, value, tmp_path):
    """Issue 29: YAML 1.1 reads 1e-5 (no dot) as a string; nbft reads it, in a file and in --set, as a number."""
    assert P.resolve(None, [f"02_sft.learning_rate={written}"])["02_sft"].learning_rate == pytest.approx(value)
    f = tmp_path / "p.yaml"
    f.write_text(f"02_sft:\n  learning_rate: {written}\n")
    assert P.resolve(f)["02_sft"].learning_rate == pytest.approx(value)
    assert P.resolve(None, ["03_peft.max_steps=1e2"])["03_peft"].max_steps == 100  # a whole number written as a float


@pytest.mark.parametrize("name", ["2024-01-01", "007", "2024", "1e5", "true"])
def test_a_name_that_looks_like_a_date_or_number_is_a_name(name, tmp_path):
    assert P.resolve(None, [f"run_name={name}"])["02_sft"].run_name == name
    f = tmp_path / "p.yaml"
    f.write_text(f"common:\n  run_name: {name}\n")
    assert P.resolve(f)["02_sft"].run_name == name


def test_an_alias_bomb_is_refused_at_once_in_little_memory(tmp_path, nbft_measured):
    """Issue 29: nine levels of nine aliases ("billion laughs") in a params file: refused naming the line, in under
    5 s and 500 MB (the nbft command in its own process, its own peak resident memory)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("common:\n  report_to: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)))
    rc, err, seconds, peak_mb = nbft_measured(["run", "--params", str(bomb)], {"NBFT_RUNS_DIR": str(tmp_path / "runs")})
    assert rc == 2 and "anchors and aliases" in err and "line 2" in err, err[-500:]
    assert seconds < 5 and peak_mb < 500, (seconds, peak_mb)
    assert not (tmp_path / "runs").exists()
