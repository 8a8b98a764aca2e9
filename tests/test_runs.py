"""Run folders: metrics merge, never overwrite, environment capture, listing."""
import json

import pytest

from nbft import params, runs


def test_record_merges_and_cleans(tmp_path):
    runs.record_metrics(tmp_path, "02_sft", {"a": 1, "b": float("nan")})
    runs.record_metrics(tmp_path, "02_sft", {"c": 2.5})
    runs.record_metrics(tmp_path, "01_data_prep", {"n": 3})
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m == {"02_sft": {"a": 1, "b": None, "c": 2.5}, "01_data_prep": {"n": 3}}


def test_reserve_run_dir_never_reuses(runs_dir):
    a = runs.reserve_run_dir(prefix="x")
    b = runs.reserve_run_dir(prefix="x")
    assert a != b and a.is_dir() and b.is_dir() and b.name.startswith(a.name)


def test_explicit_existing_name_is_refused(runs_dir):
    (runs_dir / "mine").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="never overwritten"):
        runs.reserve_run_dir("mine")
    with pytest.raises(ValueError, match="letters, digits"):
        runs.reserve_run_dir("../escape")


def test_open_run_standalone_and_in_pipeline(runs_dir):
    p = params.SFTParams(model="tiny-llama")
    run = runs.open_run(p, "02_sft")
    assert run.path.parent == runs_dir and run.path.name.endswith("-02_sft")
    env = json.loads((run.path / "env.json").read_text())
    assert {"versions", "cpu", "git", "seed", "model"} <= set(env)
    assert env["model"]["spec"] == "tiny-llama" and len(env["model"]["sha256"]) == 64
    assert env["versions"]["torch"] and env["versions"]["trl"]
    run.record(x=1)
    p2 = params.DataPrepParams(model="tiny-llama", run_name=run.path.name)
    run2 = runs.open_run(p2, "01_data_prep")
    assert run2.path == run.path and run.upstream("01_data_prep") is None
    (run2.artifacts / "f").write_text("x")
    assert run.upstream("01_data_prep") == run2.artifacts


def test_list_runs(runs_dir):
    d = runs_dir / "r1"
    d.mkdir(parents=True)
    runs.write_status(d, state="ok")
    runs.record_metrics(d, "02_sft", {"task_score_after": 0.9, "eval_loss": 1.2})
    runs.record_metrics(d, "05_rag_vs_ft", {"n_eval": 120, "retrieval_ms_p50": 4.5,  # written before issue 34
                                            "acc": {"rag": {"open": 0.8}, "ft": {"open": 0.1}}})
    rows = runs.list_runs()
    assert rows[0]["name"] == "r1" and rows[0]["state"] == "ok"
    # the first two headline metrics of each stage, in the headline order; an old run's keys under the new names
    assert rows[0]["metrics"] == {"02_sft.task_score_after": 0.9, "05_rag_vs_ft.accuracy.rag.open": 0.8,
                                  "05_rag_vs_ft.accuracy.ft.open": 0.1}


def test_card(tmp_path):
    runs.write_card(tmp_path, "t", parameters=params.SFTParams(), metrics={"m": 0.5}, base_model="x")
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["parameters"]["lora_r"] == 16 and card["metrics"] == {"m": 0.5}
    assert "- m: 0.5" in (tmp_path / "card.md").read_text()


# ---------------------------------------------------------------- issue 15: one run per folder, crash state, resume

import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from nbft import files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "params" / "smoke.yaml")
NBFT = str(Path(sys.executable).parent / "nbft")
DEAD_PID = 2 ** 22 + 7  # above the default pid_max: no such process


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    files.write_json(target, {"x": 1})
    files.write_atomic(target, "{}")
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_new_creates_whole_or_leaves_what_is_there(tmp_path):
    """files.write_new (a run's .lock): the file appears with its content whole, only where none exists; no temp."""
    target = tmp_path / ".lock"
    assert files.write_new(target, b'{"pid": 1}') and target.read_bytes() == b'{"pid": 1}'
    assert not files.write_new(target, "other") and target.read_bytes() == b'{"pid": 1}'
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_corrupt_metrics_is_moved_aside_and_reported_never_reset(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"01_data_prep": {"n_train": 5}, "02_sft": {"task_sc')  # cut short
    runs.record_metrics(tmp_path, "03_peft", {"n_methods_ok": 13})
    aside = list(tmp_path.glob("metrics.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"01_data_prep": {"n_train": 5}')
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"03_peft": {"n_methods_ok": 13}}
    err = capsys.readouterr().err
    assert "metrics.json was not valid JSON" in err and aside[0].name in err
    assert aside[0].name in json.loads((tmp_path / "status.json").read_text())["warnings"][0]
    (tmp_path / "metrics.json").write_text("[1, 2]")  # valid JSON, wrong shape: the same
    runs.record_metrics(tmp_path, "02_sft", {"a": 1})
    assert len(list(tmp_path.glob("metrics.json.corrupt-*"))) == 2


def _record_many(args):
    run_dir, stage = args
    for i in range(25):
        runs.record_metrics(Path(run_dir), stage, {f"m{i}": i})


@pytest.mark.timeout(120)
def test_metrics_read_modify_write_from_four_processes_loses_nothing(tmp_path):
    """Four processes merge into one metrics.json at once. ``spawn``: a ``fork`` from this process (it has threads:
    torch's, the tokenizers') once left a worker stuck forever on a lock held at fork time."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_record_many, [(str(tmp_path), f"s{k}") for k in range(4)], chunksize=1)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {s: len(v) for s, v in m.items()} == {f"s{k}": 25 for k in range(4)}


def test_lock_held_by_a_live_process_refuses_a_dead_ones_is_taken_over(tmp_path):
    me = runs.acquire(tmp_path)
    assert runs.lock_info(tmp_path)["pid"] == os.getpid() == me["pid"]
    with pytest.raises(runs.RunError, match=f"being written by pid {os.getpid()}"):
        runs.acquire(tmp_path)  # this process is alive: the lock is taken
    runs.release(tmp_path)
    assert runs.lock_info(tmp_path) is None
    (tmp_path / ".lock").write_text(json.dumps({"pid": DEAD_PID, "host": platform.node()}))
    runs.acquire(tmp_path)  # stale: taken over
    assert runs.lock_info(tmp_path)["pid"] == os.getpid()
    runs.release(tmp_path)


def test_list_shows_crashed_running_and_unreadable_runs_and_never_crashes(runs_dir):
    def run(name, status, metrics=None, lock=None):
        d = runs_dir / name
        d.mkdir(parents=True)
        (d / "status.json").write_text(status if isinstance(status, str) else json.dumps(status))
        if metrics is not None:
            (d / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
        if lock:
            (d / ".lock").write_text(json.dumps({"host": platform.node(), **lock}))

    run("a-crashed", {"state": "running", "stages": {"02_sft": "running"}}, lock={"pid": DEAD_PID})
    run("b-live", {"state": "running", "stages": {}}, lock={"pid": os.getpid()})
    run("c-nolock", {"state": "running", "stages": {}})
    run("d-badmetrics", {"state": "ok"}, metrics='{"02_sft": 3}')
    run("e-badstatus", '{"state": "ok", "stages": ["x"]}')
    run("f-notjson", "{{{", metrics={"02_sft": {"task_score_after": 1.0}})
    run("g-ok", {"state": "ok", "stages": {"02_sft": "ok"}}, metrics={"02_sft": {"task_score_after": 0.5}})
    states = {r["name"]: r["state"] for r in runs.list_runs()}
    assert states == {"a-crashed": "crashed", "b-live": "running", "c-nolock": "crashed", "d-badmetrics": "unreadable",
                      "e-badstatus": "unreadable", "f-notjson": "unreadable", "g-ok": "ok"}


RESERVE = """
import sys, time
from pathlib import Path
time.strftime = lambda *a: "20260101-000000"  # every process in the same second
from nbft import runs
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
try:
    print(runs.reserve_run_dir(sys.argv[2] or None, prefix="smoke"))
except FileExistsError as e:
    print("refused:", e)
"""


def test_runs_started_together_never_share_a_folder(tmp_path):
    """Named: one process gets the folder, the others are refused. Unnamed in the same second: one folder each."""
    env = {**os.environ, "NBFT_RUNS_DIR": str(tmp_path / "runs")}
    for name, n in (("same", 6), ("", 6)):
        go = tmp_path / f"go-{name}"
        procs = [subprocess.Popen([sys.executable, "-c", RESERVE, str(go), name], stdout=subprocess.PIPE, text=True,
                                  env=env, cwd=ROOT) for _ in range(n)]
        time.sleep(1.0)
        go.touch()
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        made = [o for o in outs if not o.startswith("refused")]
        if name:
            assert len(made) == 1 and made[0].endswith("/same"), outs
            assert all("already exists" in o for o in outs if o.startswith("refused"))
        else:
            assert len(set(made)) == n and all(Path(m).is_dir() for m in made), outs
            assert sorted(Path(m).name for m in made)[:2] == ["20260101-000000-smoke", "20260101-000000-smoke-2"]


def nbft(args, runs_root, **kw):
    env = {**os.environ, "NBFT_RUNS_DIR": str(runs_root), "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.Popen([NBFT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, **kw)


@pytest.mark.notebook
def test_two_runs_with_one_name_started_together_one_runs_the_other_exits_2(tmp_path):
    args = ["run", "--params", SMOKE, "--only", "01_data_prep", "--name", "same", "--no-progress"]
    procs = [nbft(args, tmp_path / "runs") for _ in range(2)]
    results = sorted((p.wait(timeout=300), *p.communicate()) for p in procs)
    (ok, out0, _), (bad, _, err1) = results
    assert (ok, bad) == (0, 2), results
    assert "run 'same' already exists" in err1 and "Traceback" not in err1
    assert json.loads((tmp_path / "runs" / "same" / "status.json").read_text())["state"] == "ok"
    assert [d.name for d in (tmp_path / "runs").iterdir()] == ["same"]


def wait_for(proc, text, timeout=120):
    """Read ``proc``'s stdout until a line contains ``text``."""
    t0 = time.time()
    lines = []
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"no {text!r} in {''.join(lines)}")


@pytest.mark.notebook
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_marks_the_run_interrupted_with_one_line_and_resume_finishes_it(tmp_path, sig, code):
    import psutil

    root = tmp_path / "runs"
    proc = nbft(["run", "--params", SMOKE, "--only", "01_data_prep", "--name", "r", "--no-progress"], root)
    wait_for(proc, "[1/1] 01_data_prep ...")
    time.sleep(4)  # the kernel is executing the notebook
    kernels = psutil.Process(proc.pid).children(recursive=True)
    assert kernels
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == (f"nbft run: interrupted ({signal.Signals(sig).name}) in 01_data_prep; "
                                            "continue it with: nbft run --resume r")
    status = json.loads((root / "r" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["stages"]["01_data_prep"] == "interrupted"
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kernels)  # the kernel was stopped
    assert not (root / "r" / ".lock").exists()
    if sig == signal.SIGTERM:  # resume, changing a parameter of the stage still to run: recorded in the run
        res = nbft(["run", "--resume", "r", "--set", "01_data_prep.n_examples=60", "--no-progress"], root,
                   env={"HF_HUB_OFFLINE": None})  # nbft sets offline mode itself, before preflight
        out, err = res.communicate(timeout=300)
        assert res.returncode == 0, err
        status = json.loads((root / "r" / "status.json").read_text())
        assert status["state"] == "ok" and status["resumes"][0]["from_state"] == "interrupted"
        assert status["resumes"][0]["changed"] == ["01_data_prep.n_examples: 80 -> 60"]
        assert params.resolve(root / "r" / "params.yaml")["01_data_prep"].n_examples == 60
        env = json.loads((root / "r" / "env.json").read_text())
        assert env["hub_offline"] is True and env["kernels"]["01_data_prep"]["hub_offline"] is True


def comparable(metrics: dict) -> dict:
    """metrics.json without what a clock measures: seconds, tokens per second, the seconds in findings and the
    time profile."""
    def strip(x, key=""):
        if isinstance(x, dict):
            return {k: strip(v, k) for k, v in x.items()
                    if not re.search(r"seconds|per_second|_ms\b|\bms\b|\bs$|peak_mem|speedup|^profile$", k)}
        if isinstance(x, list):
            return [strip(v, key) for v in x]
        if isinstance(x, str):
            return re.sub(r"\d+(\.\d+)? s\b", "<t> s", x)
        return x
    return strip(metrics)


@pytest.mark.notebook
def test_sigkill_mid_training_then_resume_gives_the_metrics_of_a_run_never_killed(tmp_path):
    """Issue 15: the smoke pipeline (01 and 02; 02 with its main LoRA run and one full fine-tuning, checkpointing
    every 2 steps) is killed with SIGKILL, runner and kernel, right after the 6th checkpoint: the second training
    call is at step 4 of 8. ``nbft list`` says crashed; ``nbft run --resume`` skips 01, re-runs 02, whose first
    call loads its finished checkpoint and whose second continues from step 4. metrics.json equals the
    uninterrupted run's, timings aside."""
    root = tmp_path / "runs"
    args = ["run", "--params", SMOKE, "--only", "01_data_prep", "02_sft", "--no-progress", "--set", "save_steps=2",
            "--set", "compare_scopes=[full]", "--set", "sweep_sizes=[]", "--set", "quality_size=0", "--set", "cpt_docs=0",
            *[x for kv in ("overfit_examples=0", "benchmarks=[]", "eval_templates=[]", "turns_examples=0",
                           "task_mix_examples=0", "chat_tokens=0") for x in ("--set", kv)]]
    ref = nbft(args + ["--name", "ref"], root)
    killed = nbft(args + ["--name", "k"], root, env={"NBFT_TEST_KILL_AFTER_CHECKPOINT": "6",
                                                     "PYTHONPATH": str(ROOT / "tests" / "hooks")})
    assert killed.wait(timeout=400) == -signal.SIGKILL
    assert ref.wait(timeout=400) == 0
    time.sleep(1.5)  # the kernel's parent poller
    k = root / "k"
    assert json.loads((k / "status.json").read_text())["state"] == "running"  # nothing could write the end
    assert [r["state"] for r in runs.list_runs(root) if r["name"] == "k"] == ["crashed"]
    slots = sorted(p.name for p in (k / "checkpoints" / "02_sft").iterdir())
    assert len(slots) == 2 and slots[1].startswith("02-SFTTrainer")
    assert [c.name for c in (k / "checkpoints" / "02_sft" / slots[1]).glob("checkpoint-*")] == ["checkpoint-4"]
    res = nbft(["run", "--resume", "k", "--no-progress"], root)
    out, err = res.communicate(timeout=400)
    assert res.returncode == 0, err
    assert "01_data_prep ok earlier (skipped)" in out
    nb = (k / "02_sft.ipynb").read_text()
    assert "(step 8 of 8)" in nb and "(step 4 of 8)" in nb  # one call loaded, one continued
    assert not (k / "checkpoints").exists()  # deleted once the stage ended ok
    a, b = (json.loads((root / n / "metrics.json").read_text()) for n in ("ref", "k"))
    assert comparable(a) == comparable(b)
    assert a["02_sft"]["seconds"] != b["02_sft"]["seconds"]  # it did resume


@pytest.mark.notebook
def test_papermill_run_name_outside_runs_fails_and_writes_nothing_outside(tmp_path):
    root = tmp_path / "area" / "runs"
    root.parent.mkdir()
    bindir = Path(sys.executable).parent
    for bad in ("../x", "../../x", "/tmp/x-nbft-escape"):
        out = tmp_path / "out.ipynb"
        proc = subprocess.run([str(bindir / "papermill"), str(ROOT / "notebooks" / "01_data_prep.ipynb"), str(out),
                               "-p", "run_name", bad, "-p", "model", "tiny-llama", "-k", "python3",
                               "--cwd", str(ROOT / "notebooks")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "NBFT_RUNS_DIR": str(root), "PATH": f"{bindir}:{os.environ['PATH']}"})
        assert proc.returncode != 0
        assert "letters, digits" in proc.stderr + out.read_text()
        assert sorted(p.name for p in (tmp_path / "area").iterdir()) == [] and not (tmp_path / "x").exists()
        assert not Path("/tmp/x-nbft-escape").exists()


# ---------------------------------------------------------------- review fixes: the run lock, resume, export, sweep names

HOLD_LOCK = """
import sys
from pathlib import Path
from nbft import runs
runs.acquire(Path(sys.argv[1]))
print("took", flush=True)
sys.stdin.read()
runs.release(Path(sys.argv[1]))
"""


def test_a_stale_lock_taken_over_by_two_processes_at_once_has_one_winner(tmp_path, monkeypatch):
    """This process judges a dead holder's lock stale; before it moves the lock aside, another process takes the
    stale lock over. The live lock of that process must not be moved aside: it holds the run, this one is refused."""
    (tmp_path / ".lock").write_text(json.dumps({"pid": DEAD_PID, "host": platform.node(), "started": "-"}))
    real, other = runs.holder_alive, []

    def judged_then_raced(info):
        alive = real(info)
        if not other:  # between the judgement and the takeover
            other.append(subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, cwd=ROOT))
            assert other[0].stdout.readline().strip() == "took"
        return alive

    monkeypatch.setattr(runs, "holder_alive", judged_then_raced)
    try:
        with pytest.raises(runs.RunError, match="being written by pid (\\d+)") as e:
            runs.acquire(tmp_path)
        assert f"pid {other[0].pid} " in str(e.value)
        assert runs.lock_info(tmp_path)["pid"] == other[0].pid  # the winner's lock is in place
    finally:
        for proc in other:
            proc.communicate("", timeout=60)
    assert runs.lock_info(tmp_path) is None  # the winner released it


def test_a_lock_appears_with_its_content_whole(tmp_path, monkeypatch):
    """A reader that finds .lock empty would judge it stale: the content is made before the file appears."""
    class SpyJson:
        loads = staticmethod(json.loads)

        @staticmethod
        def dumps(obj, **kw):
            seen.append((tmp_path / ".lock").exists())
            return json.dumps(obj, **kw)

    seen = []
    monkeypatch.setattr(runs, "json", SpyJson)
    me = runs.acquire(tmp_path)
    assert seen == [False] and runs.lock_info(tmp_path) == me
    runs.release(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp file left


def test_a_garbage_lock_is_taken_over_once(tmp_path):
    (tmp_path / ".lock").write_text("")
    assert runs.acquire(tmp_path)["pid"] == os.getpid()
    assert (tmp_path / ".lock.stale-None").read_text() == ""
    runs.release(tmp_path)


def test_a_run_locked_on_another_host_says_how_to_free_it(runs_dir):
    from nbft import cli

    d = runs_dir / "far"
    d.mkdir(parents=True)
    status = {"state": "running", "stages": {"01_data_prep": "running"}}
    (d / "status.json").write_text(json.dumps(status))
    (d / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "-"}))
    assert runs.run_state(d, status) == "running"  # this host cannot tell it crashed
    for call in (lambda: cli.prepare_resume("far", None, []), lambda: runs.acquire(d)):
        with pytest.raises(runs.RunError) as e:
            call()
        message = str(e.value)
        assert "pid 4242 on elsewhere" in message and f"if that process is gone, delete {d / '.lock'}" in message
        assert "\n" not in message
    assert json.loads((d / ".lock").read_text())["host"] == "elsewhere"  # behaviour otherwise unchanged


@pytest.mark.parametrize("status", ['{"state": "failed", "stages": ["01_data_prep"]}', '{"state": "failed"}',
                                    '["running"]', '{"state": "failed", "stages": {"02_sfft": "ok"}}', "{{"])
def test_resume_refuses_a_malformed_status(runs_dir, status):
    from nbft import cli

    (runs_dir / "odd").mkdir(parents=True)
    (runs_dir / "odd" / "status.json").write_text(status)
    with pytest.raises(runs.RunError, match="status.json is missing or unreadable; this run cannot be resumed"):
        cli.prepare_resume("odd", None, [])


def test_resume_refuses_a_malformed_status_under_python_O_too(runs_dir):
    """The check is not an assert (python -O drops those)."""
    (runs_dir / "odd").mkdir(parents=True)
    (runs_dir / "odd" / "status.json").write_text('{"state": "failed", "stages": ["01_data_prep"]}')
    code = ("from nbft import cli, runs\ntry:\n    cli.prepare_resume('odd', None, [])\n"
            "except runs.RunError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "NBFT_RUNS_DIR": str(runs_dir)})
    assert out.stdout.startswith("refused: --resume odd:") and "cannot be resumed" in out.stdout, out.stderr[-2000:]


def test_a_notebook_by_hand_cannot_write_into_a_run_a_live_nbft_run_holds(runs_dir, monkeypatch):
    d = runs_dir / "held"
    d.mkdir(parents=True)
    p = params.DataPrepParams(model="tiny-llama", run_name="held")
    holder = subprocess.Popen(["sleep", "120"])
    try:
        (d / ".lock").write_text(json.dumps({"pid": holder.pid, "host": platform.node(), "started": "-",
                                             "proc_start": runs._proc_start(holder.pid)}))
        monkeypatch.delenv(runs.RUNNER_ENV, raising=False)
        with pytest.raises(runs.RunError, match=f"run_name 'held': that run is being written by pid {holder.pid} "):
            runs.open_run(p, "01_data_prep")
        assert [x.name for x in d.iterdir()] == [".lock"]  # nothing written
        monkeypatch.setenv(runs.RUNNER_ENV, "1")  # the kernel that nbft run started: its own run
        assert runs.open_run(p, "01_data_prep").path == d
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv(runs.RUNNER_ENV)
    assert runs.open_run(p, "01_data_prep").path == d  # the holder is gone: crashed, the notebook may write
    (d / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "started": "-"}))
    assert runs.open_run(p, "01_data_prep").path == d  # held by this very process


@pytest.mark.parametrize("fails", [False, True])
def test_a_failed_html_export_is_a_warning_and_never_hides_the_stage_state(runs_dir, monkeypatch, capsys, fails):
    """The stage's state (ok; or failed with its stage and cell) is in status.json whatever the export does; an
    export that raises is a warning in status.json and one line on stderr."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from nbft import cli

    for key in ("PATH", runs.RUNNER_ENV, "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored afterwards: execute sets them for its kernels

    def execute_notebook(src, out, **kw):
        Path(out).write_text("{}")
        if fails:
            raise PapermillExecutionError(3, 4, "1/0", "ZeroDivisionError", "division by zero", [])

    def export_html(nb_path):
        raise OSError("disk full")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(cli, "_export_html", export_html)
    monkeypatch.setattr(runs, "write_env", lambda *a, **k: {})
    run_dir = runs.reserve_run_dir("r")
    rc = cli.execute({"01_data_prep": params.DataPrepParams(model="tiny-llama")}, ["01_data_prep"], run_dir,
                     progress=False)
    status = json.loads((run_dir / "status.json").read_text())
    if fails:
        assert rc == cli.EXIT_FAILED and status["state"] == "failed" and status["stages"] == {"01_data_prep": "failed"}
        assert status["failed_stage"] == "01_data_prep" and status["failed_cell"] == 3
        assert status["error"] == "ZeroDivisionError: division by zero"
    else:
        assert rc == 0 and status["state"] == "ok" and status["stages"] == {"01_data_prep": "ok"}
    assert status["warnings"] == [f"01_data_prep: HTML report not written (OSError: disk full); the executed "
                                  f"notebook is {run_dir / '01_data_prep.ipynb'}"]
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line] == [f"nbft run: warning: {status['warnings'][0]}"]
    assert runs.lock_info(run_dir) is None


@pytest.mark.parametrize("value", ["a=b", "x y", "caf\u00e9", "1,2", "a/b", "q_proj=v"])
def test_a_sweep_point_name_is_always_a_valid_run_name(value):
    from nbft import cli

    name = cli._point_name("sw", {"02_sft.lora_target": value})
    assert params.check_run_name(name) == name and name.startswith("sw__lora_target-")


# ---------------------------------------------------------------- nbft run --jobs: stages at once

def fake_pipeline(monkeypatch, fail: str | None = None, seconds: float = 0.3, long: float = 0.6):
    """papermill replaced by a stand-in that records when each stage ran and the kernel manager it was given
    (and raises for ``fail``); each stage takes ``seconds``, 06_classify ``long``; HTML export off. Returns the
    record: stage -> {start, end, kernel_manager}."""
    import threading
    import time

    import papermill

    from nbft import cli

    seen, lock = {}, threading.Lock()

    def execute_notebook(src, out, parameters=None, kernel_manager_class=None, **kw):
        stage = Path(src).stem
        with lock:
            seen[stage] = {"start": time.perf_counter(), "kernel_manager": kernel_manager_class}
        time.sleep(long if stage == "06_classify" else seconds)
        Path(out).write_text("{}")
        with lock:
            seen[stage]["end"] = time.perf_counter()
        if stage == fail:
            raise RuntimeError(f"{stage} broke")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(cli, "_export_html", lambda nb: nb)
    monkeypatch.setattr(cli, "_write_index", lambda run_dir: None)
    monkeypatch.setattr(cli, "print_summary", lambda run_dir, stages: None)
    return seen


def run_fake(runs_dir, jobs: int):
    from nbft import cli

    resolved = params.resolve(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
    stages = list(params.STAGES)
    run_dir = runs.reserve_run_dir("lanes")
    return cli.execute({s: resolved[s] for s in stages}, stages, run_dir, progress=False, jobs=jobs), run_dir


def test_jobs_2_runs_two_stages_at_once_and_none_before_what_it_reads(runs_dir, monkeypatch):
    from nbft import cli

    seen = fake_pipeline(monkeypatch)
    rc, run_dir = run_fake(runs_dir, jobs=2)
    assert rc == 0 and set(seen) == set(params.STAGES)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "ok" and set(status["stages"].values()) == {"ok"}
    for stage, t in seen.items():  # never before the stages it reads, never more than two at once
        for need in cli.needs(stage, list(params.STAGES)):
            assert t["start"] >= seen[need]["end"], (stage, need)
        at_once = [s for s, u in seen.items() if u["start"] <= t["start"] < u["end"]]
        assert len(at_once) <= 2, at_once
    assert seen["06_classify"]["start"] < seen["01_data_prep"]["end"]  # 06 reads nothing: it starts at once
    threads = max(1, cli.cpu_count() // 2)
    manager = seen["02_sft"]["kernel_manager"]
    assert manager is not None and manager.__name__ == "ThreadsKernelManager"
    assert status["clock"]["02_sft"][0] >= status["clock"]["01_data_prep"][1] - 0.05
    assert threads >= 1


def test_jobs_2_a_failed_stage_starts_nothing_new_and_lets_the_running_one_finish(runs_dir, monkeypatch, capsys):
    from nbft import cli

    seen = fake_pipeline(monkeypatch, fail="02_sft", seconds=0.2, long=1.5)
    rc, run_dir = run_fake(runs_dir, jobs=2)
    assert rc == cli.EXIT_FAILED
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["failed_stage"] == "02_sft"
    assert status["stages"]["06_classify"] == "ok"  # it was running: it finished
    assert "04_rlhf" not in seen and "07_distill" not in seen and "99_report" not in seen
    assert not [s for s, t in seen.items() if t["start"] > seen["02_sft"]["end"]]
    assert "FAILED in notebook 02_sft.ipynb" in capsys.readouterr().err


def test_jobs_1_is_one_stage_at_a_time_in_order(runs_dir, monkeypatch):
    seen = fake_pipeline(monkeypatch, seconds=0.05, long=0.05)
    rc, _ = run_fake(runs_dir, jobs=1)
    order = sorted(seen, key=lambda s: seen[s]["start"])
    assert rc == 0 and order == list(params.STAGES)
    assert all(seen[a]["end"] <= seen[b]["start"] for a, b in zip(order, order[1:]))
    # one lane: kernels get the allocator settings only, not a thread count
    assert all(t["kernel_manager"] is not None and t["kernel_manager"].__name__ == "ThreadsKernelManager"
               for t in seen.values())


@pytest.mark.parametrize("jobs, words", [("0", "at least 1"), ("two", "a whole number"), ("-1", "at least 1")])
def test_bad_jobs_exits_2_before_any_folder(runs_dir, capsys, jobs, words):
    from nbft import cli

    assert cli.main(["run", "--params", str(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"),
                     "--jobs", jobs]) == cli.EXIT_BAD_INPUT
    assert words in capsys.readouterr().err and not list(runs_dir.glob("*"))


def test_kernel_manager_gives_its_kernels_their_share_of_the_cores_and_the_allocator_settings():
    import asyncio

    from nbft import cli

    got = []

    class Base:
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            got.append(kw["env"])

    import jupyter_client
    original = jupyter_client.AsyncKernelManager
    try:
        jupyter_client.AsyncKernelManager = Base
        lanes, alone = cli._threads_kernel_manager(3, "/s"), cli._threads_kernel_manager(None, "/s")
    finally:
        jupyter_client.AsyncKernelManager = original
    km = lanes()
    # over unix sockets in the caller's private folder (no TCP: ipykernel's unencrypted-transport warning)
    assert (km.transport, km.connection_file) == ("ipc", "/s/kernel.json")
    asyncio.run(km._async_launch_kernel(["python"], env={"PATH": "/bin"}))
    asyncio.run(alone()._async_launch_kernel(["python"], env={"PATH": "/bin", "MALLOC_TOP_PAD_": "0"}))
    assert got[0] == {"PATH": "/bin", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", **cli.KERNEL_ENV}
    # one lane: torch's own thread count; a value the user set wins over nbft's
    assert got[1] == {**cli.KERNEL_ENV, "PATH": "/bin", "MALLOC_TOP_PAD_": "0"}
    assert int(cli.KERNEL_ENV["MALLOC_MMAP_THRESHOLD_"]) <= 32 * 2**20  # glibc ignores a larger threshold


def test_makefile_exports_the_kernels_allocator_settings():
    """make lab / make test run with what nbft run gives its kernels (cli.KERNEL_ENV)."""
    import re

    from nbft import cli

    text = (ROOT / "Makefile").read_text()
    exported = dict(re.findall(r"^export (MALLOC_\w+) \?= (\S+)$", text, re.M))
    assert exported == cli.KERNEL_ENV


def test_a_stage_that_ended_ok_is_never_run_again_into_its_run_by_hand(runs_dir, monkeypatch):
    """Issue 29: runs are append-only. A notebook run by hand into a run where its stage ended ok (status.json, or
    its metrics for a run made by hand) is refused before anything is written; an unfinished stage may run, and the
    notebook then holds the run's lock as nbft run does."""
    monkeypatch.delenv(runs.RUNNER_ENV, raising=False)
    done = runs_dir / "done"
    done.mkdir(parents=True)
    runs.write_status(done, state="ok", stages={"01_data_prep": "ok", "02_sft": "failed"})
    before = {f.name: f.read_bytes() for f in done.iterdir()}
    with pytest.raises(runs.RunError, match="01_data_prep already ended ok in that run.*nbft run --resume done"):
        runs.open_run(params.DataPrepParams(model="tiny-llama", run_name="done"), "01_data_prep")
    assert {f.name: f.read_bytes() for f in done.iterdir()} == before
    run = runs.open_run(params.SFTParams(model="tiny-llama", run_name="done"), "02_sft")  # failed: may run again
    assert runs.lock_info(run.path)["pid"] == os.getpid()
    runs.release(run.path)
    by_hand = runs_dir / "by-hand"
    p = params.DataPrepParams(model="tiny-llama", run_name="by-hand")
    runs.open_run(p, "01_data_prep")  # a notebook in JupyterLab: the run is this kernel's while it lives ...
    runs.record_metrics(by_hand, "01_data_prep", {"n_train": 3})
    assert runs.open_run(p, "01_data_prep").path == by_hand  # ... so its setup cell may run again
    runs.release(by_hand)  # the kernel is gone; another one may not rewrite what it recorded
    with pytest.raises(runs.RunError, match="already ended ok"):
        runs.open_run(p, "01_data_prep")
    monkeypatch.setenv(runs.RUNNER_ENV, "1")  # nbft run's own kernels: the runner decides (--resume clears a stage)
    assert runs.open_run(params.DataPrepParams(model="tiny-llama", run_name="by-hand"), "01_data_prep").path == by_hand


def test_status_is_written_over_its_own_blocks_when_the_disk_is_full(tmp_path, monkeypatch):
    """Issue 29: on a full disk no temporary file can be made; status.json (kept with a reserve of trailing spaces)
    still takes the run's last state, written in place."""
    import builtins
    import errno

    runs.write_status(tmp_path, state="running", stages={"01_data_prep": "running"})
    real_open = builtins.open

    def full(file, mode="r", *a, **kw):
        if ".tmp-" in str(file) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", full)
    runs.write_status(tmp_path, state="failed", error="disk full: OSError: [Errno 28] No space left on device",
                      reason="disk full", stages={"01_data_prep": "failed"})
    monkeypatch.undo()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "disk full" and status["stages"]["01_data_prep"] == "failed"


@pytest.mark.notebook
def test_a_full_disk_mid_run_says_so_and_resume_finishes_with_the_metrics_of_a_run_never_stopped(tmp_path):
    """Issue 29: the disk fills while 01_data_prep saves its splits (ENOSPC for every write under its artifacts,
    tests/hooks/sitecustomize.py). The run fails with status.json saying disk full and the command to resume; once
    space is back, nbft run --resume finishes, and metrics.json equals an uninterrupted run's, timings aside.
    (A resumed stage runs again from its start; test_sigkill_... shows training resuming mid-way.)"""
    root = tmp_path / "runs"
    args = ["run", "--params", SMOKE, "--only", "01_data_prep", "--no-progress"]
    ref = nbft(args + ["--name", "ref"], root)
    full = nbft(args + ["--name", "full"], root, env={"PYTHONPATH": str(ROOT / "tests" / "hooks"),
                                                       "NBFT_TEST_DISK_FULL": "artifacts/01_data_prep"})
    out, err = full.communicate(timeout=400)
    assert full.returncode == 1, err[-2000:]
    assert "disk is full" in err and "nbft run --resume full" in err
    status = json.loads((root / "full" / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "disk full" and status["failed_stage"] == "01_data_prep"
    assert status["error"].startswith("disk full: OSError") and not (root / "full" / ".lock").exists()
    assert ref.wait(timeout=400) == 0
    res = nbft(["run", "--resume", "full", "--no-progress"], root)
    out, err = res.communicate(timeout=400)
    assert res.returncode == 0, err[-2000:]
    status = json.loads((root / "full" / "status.json").read_text())
    assert status["state"] == "ok" and status["reason"] is None  # the resumed run no longer says disk full
    a, b = (json.loads((root / n / "metrics.json").read_text()) for n in ("ref", "full"))
    assert comparable(a) == comparable(b)
