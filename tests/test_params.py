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
    assert list(cell) == list(expected), f"{stage}: names/order differ from {P.STAGES[stage].__name__}"
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


def test_common_key_in_stage_section_is_allowed_per_stage(tmp_path):
    r = P.resolve(write(tmp_path, "common:\n  seed: 3\n02_sft:\n  seed: 5\n"))
    assert r["01_data_prep"].seed == 3 and r["02_sft"].seed == 5


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
    for cls in P.STAGES.values():
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
