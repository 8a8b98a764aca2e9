"""The ``nbft`` command: run the notebook pipeline with Papermill, sweep a grid, list runs, show parameters.

    nbft run [--params FILE] [--only STAGE ...] [--name NAME] [--set key=value ...] [--jobs N|auto]
    nbft run --resume NAME [--set key=value ...]   continue a crashed, interrupted or failed run
    nbft sweep [--params FILE] --grid key=v1,v2 [--grid ...] [--only STAGE ...] [--name NAME] [--set ...]
    nbft train STAGE [STAGE ...] --run NAME [--params FILE] [--set ...]   under accelerate launch / torchrun / srun
    nbft list
    nbft params [--params FILE] [--set key=value ...] [--defaults] [--sync-notebooks]
    nbft vendor                       fetch the offline widget renderer (make install does it)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from . import files
from . import params as P
from . import runs

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
DEFAULT_PARAMS = "params/default.yaml"


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


def _absolutize_paths(resolved: dict) -> None:
    """Relative data paths are relative to where ``nbft run`` was started; notebooks run elsewhere. Which parameters
    are paths, and how a path is told from a name, is in the stage table (``params.Stage.paths``)."""
    from . import data

    def absolute(value: str) -> str:
        """Absolute, symlinks NOT resolved: a link keeps its own name, which says the format of a data file whose
        target is an extension-less blob (the Hugging Face cache, git-annex). Nothing here touches the disk or
        raises: a loop, a name too long or a ``~user`` with no such user is the stage's check to name."""
        expanded = os.path.expanduser(value)
        return value if expanded.startswith("~") else os.path.abspath(expanded)

    def is_dir(value: str) -> bool:
        return os.path.isdir(os.path.expanduser(value))  # False, never an error, for a path that cannot be a folder

    def convert(value, param: P.PathParam):
        if param.kind == "runs":  # run folders given as paths; bare names stay names under runs/
            return [absolute(r) if is_dir(r) else r for r in value]
        if value in param.names:
            return value
        if param.kind == "dataset" and isinstance(value, list):  # a mix: each source's path, as one dataset's
            return [{**src, "path": convert(src["path"], param)} if isinstance(src, dict) and
                    isinstance(src.get("path"), str) else src for src in value]
        if param.kind == "dataset":
            return absolute(value) if value and data.is_file_spec(value) else value
        if param.kind == "model":
            return absolute(value) if is_dir(value) else value
        return absolute(value)

    for stage, p in resolved.items():
        for param in (*P.STAGES[stage].paths, *P.COMMON_PATHS):
            setattr(p, param.key, convert(getattr(p, param.key), param))


def preflight(resolved: dict, stages: list[str]) -> None:
    """Check what can be checked before any notebook runs (and before any folder is made): the model spec (a
    folder needs config, weights and tokenizer), the device, each stage's own inputs (its module's
    ``check_inputs``: data files, preference pairs, documents and questions, runs to compare), and 01_data_prep's
    whole chain with the model's tokenizer (filters that remove everything, empty splits). Parameter ranges and
    names were checked when the parameters were resolved."""
    import importlib

    from . import data, launch, models, tracking

    checks = {s: getattr(importlib.import_module(f"nbft.{P.STAGES[s].module}"), "check_inputs", None) for s in stages}
    for spec in dict.fromkeys(resolved[s].model for s in stages):
        models.resolve(spec)
    for device in dict.fromkeys(resolved[s].device for s in stages):
        models.pick_device(device)  # cuda without a GPU fails here, not in the first notebook
    for s in stages:  # processes beyond the machine's cores (CPU) or GPUs would only wait for each other
        n, device = resolved[s].num_processes, models.pick_device(resolved[s].device)
        if n > 1 and not launch.in_launched_process():
            import torch

            have = torch.cuda.device_count() if device == "cuda" else cpu_count()
            if n > have:
                raise P.ParamError(f"num_processes {n}: this machine has {have} "
                                   f"{'GPU' if device == 'cuda' else 'CPU core'}{'s' * (have != 1)}; at most {have}")
    common = resolved[stages[0]]
    tracking.check(common.report_to)  # a tracker that is not installed fails here
    if common.accelerate_config:  # accelerate's own parser: a missing file or an unknown key fails here
        try:
            launch.read_config(common.accelerate_config)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise P.ParamError(f"accelerate_config {common.accelerate_config}: {type(e).__name__}: {e}") from None
    for stage in stages:
        if checks[stage] is not None:
            checks[stage](resolved[stage])
    if "01_data_prep" in stages:  # the whole data chain, tokenizer filters and split sizes included
        data.check_prepared(resolved["01_data_prep"], models.load_tokenizer(resolved["01_data_prep"].model))


def _export_html(nb_path: Path) -> Path:
    from . import export

    return export.export_html(nb_path)


def _export_or_warn(run_dir: Path, nb_path: Path, label: str) -> Path | None:
    """The stage's HTML report (``_export_html``); a failure to export is a warning (status.json ``warnings``
    and one line on stderr), never the stage's failure: the executed notebook is there either way."""
    try:
        return _export_html(nb_path)
    except Exception as e:
        message = f"{nb_path.stem}: HTML report not written ({type(e).__name__}: {e}); the executed notebook is {nb_path}"
        with contextlib.suppress(OSError):  # a full disk: the line below still says it
            runs.write_status(run_dir, append={"warnings": message[:400]})
        print(f"{label}: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)
        return None


def _track(run_dir: Path, stage: str, p, label: str) -> None:
    """The stage's parameters and final metrics to the trackers of ``report_to`` (``tracking.log_stage``); a
    tracker that fails is a warning, as an HTML export that fails is."""
    from . import tracking

    if not tracking.trackers(p.report_to):
        return
    try:
        metrics = runs.read_json(run_dir / "metrics.json", {}).get(stage) or {}
        tracking.log_stage(run_dir, stage, p.report_to, dataclasses.asdict(p), runs.flatten(metrics))
    except Exception as e:
        message = f"{stage}: final metrics not sent to {', '.join(p.report_to)} ({type(e).__name__}: {e})"
        runs.write_status(run_dir, append={"warnings": message})
        print(f"{label}: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


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


def _prepare(params_file, sets, only, name) -> tuple[dict, list[str], str | None]:
    """Validate everything a run needs before anything is written: parameters, stages, run name, inputs.
    Returns the parameters, the stages and the run name (None: a new timestamped one)."""
    resolved = P.resolve(params_file, sets)
    stages = _stage_names(only)
    _absolutize_paths(resolved)
    name = name or resolved[stages[0]].run_name or None
    if name:
        runs.check_free(name)
    preflight(resolved, stages)
    return resolved, stages, name


def _offline_env() -> None:
    """Offline unless asked otherwise, set before anything imports huggingface_hub (it reads the variable once):
    preflight, the runner and the kernels it starts all see the same mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _kernel_env(runs_root: Path) -> None:
    # The kernel must be this environment's python, and must find the run folders.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ[runs.RUNS_ENV] = str(runs_root)
    _offline_env()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while a run executes (``signum`` says which)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT and SIGTERM stop the kernel at once (before the notebook client's own clean-up can ask it to shut
    down mid-cell) and raise ``Interrupted`` in the runner (the old handlers come back afterwards)."""
    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_children()
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _stop_children() -> None:
    """Stop the notebook kernel(s) this process started (they run in their own session: a terminal's Ctrl-C
    does not reach them). SIGKILL: the stage is abandoned anyway, and a kernel asked to shut down mid-cell
    prints a traceback of its closed sockets."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for c in children:
        with contextlib.suppress(psutil.Error):
            c.kill()
    psutil.wait_procs(children, timeout=5)


def needs(stage: str, stages: list[str], resolved: dict | None = None) -> list[str]:
    """The stages of ``stages`` that ``stage`` must wait for: those it reads (``params.Stage.needs``; "*": every
    other stage of the run, as the report does; with the ``resolved`` parameters also the stage its ``needs_from``
    parameter names: 08_export's ``export_model: 04_rlhf/dpo_policy`` waits for 04_rlhf)."""
    row = P.STAGES[stage]
    wanted = row.needs
    if row.needs_from and resolved is not None and stage in resolved:
        wanted = (*wanted, str(getattr(resolved[stage], row.needs_from)).split("/")[0])
    return [s for s in stages if s != stage and ("*" in wanted or s in wanted)]


def cpu_count() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pick_jobs(jobs: str | int, resolved: dict) -> int:
    """``--jobs``: a number, or ``auto``: 2 on a CPU with at least 2 cores (two kernels of one thread each train
    1.6x as much per second as one kernel of two threads on 2 cores: docs/measurements.md), 1 on a GPU (stages
    would share its memory)."""
    if str(jobs) == "auto":
        from . import models

        common = next(iter(resolved.values()))
        return 2 if models.pick_device(common.device) == "cpu" and cpu_count() >= 2 else 1
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        raise P.ParamError(f"--jobs {jobs!r}: a whole number of stages at once, or auto") from None
    if n < 1:
        raise P.ParamError(f"--jobs {n}: at least 1")
    return n


#: glibc malloc settings every notebook kernel nbft starts runs with (a value already in the environment wins;
#: the Makefile exports the same ones for ``make lab`` and the tests). By default glibc serves each allocation above
#: a threshold it adjusts at run time with a fresh mapping and unmaps it when freed, so every training step and every
#: generated token faults zero-filled pages in again: ~100k page faults a second and 10-25% of a kernel's time in
#: the OS during a pipeline run. Blocks up to 32 MiB (glibc's maximum threshold) from the heap, freed memory kept
#: for the next step: page faults -55%, time in the OS ~1%; on training and generation 1.18x alone, 1.12x and 0.99x
#: in two runs with two lanes (the machine's noise is of that size), peak memory unchanged (benchmarks/allocator.py,
#: docs/measurements.md).
KERNEL_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**32),
              "MALLOC_TOP_PAD_": str(256 * 2**20)}


def _threads_kernel_manager(threads: int | None, sockets: str):
    """A kernel manager whose kernels run with ``KERNEL_ENV`` and, with ``threads``, use that many intra-op threads
    (OMP_NUM_THREADS, which torch reads when it starts): the lanes of ``--jobs`` share the cores instead of each
    taking all of them. The kernel talks to the runner over IPC (unix sockets in ``sockets``, a private folder of
    the caller's), not TCP: ipykernel warns on every start over TCP without CurveZMQ keys that anyone on the machine
    could read the traffic; a unix socket in a 0700 folder is this user's alone. The connection file goes in the same
    folder (jupyter_client's default would put the sockets in the kernel's working directory)."""
    from jupyter_client import AsyncKernelManager

    class ThreadsKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
            self.connection_file = os.path.join(sockets, "kernel.json")  # sockets: <sockets>/kernel-ipc-<n>

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            env = {**KERNEL_ENV, **(kw.get("env") or os.environ)}
            if threads:
                env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            kw["env"] = env
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return ThreadsKernelManager


def execute(resolved: dict, stages: list[str], run_dir: Path, progress: bool = True, verbose: bool = False,
            label: str = "nbft run", resume: dict | None = None, jobs: int = 1) -> int:
    """Execute ``stages`` with Papermill into ``run_dir`` (reserved by the caller) holding its lock: executed
    notebooks, offline HTML reports, status.json after every stage (``clock``: each stage's start and end, Unix
    seconds) and ``index.html``. With ``resume``
    (``prepare_resume``), stages that ended ok are skipped and the others run again from their start (their
    trainers resume from their checkpoints). ``jobs`` above 1: that many stages at once, each kernel with its
    share of the cores, a stage starting once its ``needs`` ended ok; a failed stage stops new ones from starting
    (those running finish). SIGINT/SIGTERM stop the run with status ``interrupted``.
    Returns the exit code: 0, EXIT_FAILED, or 128 + the signal number."""
    runs.acquire(run_dir)
    running: dict = {}
    try:
        with _signals_interrupt():
            return _execute(resolved, stages, run_dir, progress, verbose, label, resume, running, jobs)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        with _signals_ignored():
            _stop_children()
            runs.write_status(run_dir, state="interrupted", signal=signal.Signals(signum).name,
                              **({"stages": {s: "interrupted" for s in running}} if running else {}))
            with contextlib.suppress(Exception):
                _write_index(run_dir)
            where = ", ".join(running) or "setup"
            print(f"\n{label}: interrupted ({signal.Signals(signum).name}) in {where}; "
                  f"continue it with: nbft run --resume {run_dir.name}", file=sys.stderr, flush=True)
        return 128 + signum
    except Exception as e:  # a full disk: one line; anything else is a bug in nbft itself: recorded, then shown in full
        full = files.disk_full(e)
        with contextlib.suppress(OSError):  # never a second error from the handler of the first
            runs.write_status(run_dir, state="failed", error=f"{'disk full: ' if full else ''}{type(e).__name__}: "
                              f"{str(e)[:300]}", **({"reason": "disk full"} if full else {}))
        if full:
            print(f"{label}: FAILED: the disk is full ({e}); free some space, then continue the run with: "
                  f"nbft run --resume {run_dir.name}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        raise
    finally:
        runs.release(run_dir)


@contextlib.contextmanager
def _signals_ignored():
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _write_index(run_dir: Path) -> None:
    from . import report

    report.write_index(run_dir)


def _execute(resolved, stages, run_dir, progress, verbose, label, resume, running, jobs=1) -> int:
    import concurrent.futures as cf

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb_dir = notebooks_dir()
    for p in resolved.values():
        p.run_name = run_dir.name
    _kernel_env(run_dir.parent)
    os.environ[runs.RUNNER_ENV] = "1"  # the kernels' trainers checkpoint: this runner resumes from and deletes them
    done = set(resume["done"]) if resume else set()
    # status.json first, small and with room to spare (runs.write_status): whatever fails next, a full disk
    # included, the run can say why it stopped and be resumed
    if resume:
        resumed = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_state": resume["state"],
                   "skipped": sorted(done, key=stages.index), "set": resume["set"], "changed": resume["changed"]}
        runs.write_status(run_dir, state="running", failed_stage=None, failed_cell=None, error=None, signal=None,
                          reason=None, append={"resumes": resumed})
    else:
        runs.write_status(run_dir, state="running", stages={s: "pending" for s in stages}, started=time.time())
    files.write_atomic(run_dir / "params.yaml", P.to_yaml(resolved))
    if not resume:
        runs.write_env(run_dir, resolved[stages[0]])
    jobs = max(1, min(jobs, len([s for s in stages if s not in done]) or 1))
    threads = max(1, cpu_count() // jobs) if jobs > 1 else None
    print(f"{label}: {run_dir} ({len(stages)} stage{'s' * (len(stages) > 1)}: {', '.join(stages)})"
          + (f"; resuming, {len(done)} done: {', '.join(s for s in stages if s in done)}" if resume else "")
          + (f"; {jobs} at once, {threads} thread{'s' * (threads > 1)} each" if threads else ""), flush=True)
    n = len(stages)
    num = {s: f"[{stages.index(s) + 1}/{n}]" for s in stages}
    for stage in stages:
        if stage in done:
            print(f"{num[stage]} {stage} ok earlier (skipped)", flush=True)

    def papermill(stage):  # the one call that may run in a lane's thread: no status or index writes here
        # The kernel's sockets: a fresh 0700 folder per stage, short (a unix socket's path has ~107 bytes), removed
        # with whatever a killed kernel left in it.
        import tempfile

        tmp = tempfile.gettempdir()
        with tempfile.TemporaryDirectory(prefix="nbft-kernel-", dir=tmp if len(tmp) < 60 else "/tmp") as sockets:
            kw = {"kernel_manager_class": _threads_kernel_manager(threads, sockets)}
            pm.execute_notebook(str(nb_dir / f"{stage}.ipynb"), str(run_dir / f"{stage}.ipynb"),
                                parameters=dataclasses.asdict(resolved[stage]), kernel_name="python3",
                                progress_bar=progress and not threads, cwd=None if threads else str(nb_dir),
                                log_output=verbose, **kw)

    def started(stage):
        print(f"{num[stage]} {stage} ...", flush=True)
        if resume:
            runs.clear_metrics(run_dir, stage)  # recorded again from the start of the stage
        running[stage] = time.perf_counter()
        runs.write_status(run_dir, stages={stage: "running"}, clock={stage: [round(time.time(), 2), None]})

    def ended(stage, error: BaseException | None) -> int:
        secs = time.perf_counter() - running.pop(stage)
        out = run_dir / f"{stage}.ipynb"
        if isinstance(error, PapermillExecutionError):
            where_cell = f"cell {error.cell_index} (In [{error.exec_count}])"
            full = error.ename in ("OSError", "IOError") and re.search(r"\[Errno (28|122)\]", str(error.evalue))
            runs.write_status(run_dir, state="failed", stages={stage: "failed"}, failed_stage=stage,
                              failed_cell=error.cell_index,
                              error=f"{'disk full: ' if full else ''}{error.ename}: {error.evalue}",
                              **({"reason": "disk full"} if full else {}))
            if full:
                print(f"{label}: the disk is full: free some space, then continue the run with: "
                      f"nbft run --resume {run_dir.name}", file=sys.stderr)
            html = _export_or_warn(run_dir, out, label) if out.exists() else None
            _write_index(run_dir)
            print(f"{label}: FAILED in notebook {stage}.ipynb, {where_cell}: {error.ename}: {error.evalue}",
                  file=sys.stderr)
            print(f"  partial executed notebook: {out}" + (f"\n  partial report: {html}" if html else ""),
                  file=sys.stderr)
            return EXIT_FAILED
        if error is not None:  # kernel died, notebook missing, ...
            runs.write_status(run_dir, state="failed", stages={stage: "failed"}, failed_stage=stage,
                              error=f"{type(error).__name__}: {error}")
            _write_index(run_dir)
            print(f"{label}: FAILED in notebook {stage}.ipynb: {type(error).__name__}: {error}", file=sys.stderr)
            return EXIT_FAILED
        runs.write_status(run_dir, stages={stage: "ok"}, seconds={stage: round(secs, 1)},
                          clock={stage: [round(time.time() - secs, 2), round(time.time(), 2)]})
        _track(run_dir, stage, resolved[stage], label)
        _export_or_warn(run_dir, out, label)
        shutil.rmtree(run_dir / runs.CHECKPOINTS / stage, ignore_errors=True)  # the stage is done: no resume needed
        with contextlib.suppress(OSError):
            (run_dir / runs.CHECKPOINTS).rmdir()
        _write_index(run_dir)
        print(f"{num[stage]} {stage} ok ({secs:.0f} s)", flush=True)
        done.add(stage)
        return 0

    t_all = time.perf_counter()
    todo = [s for s in stages if s not in done]
    if not threads:
        for stage in todo:
            started(stage)
            try:
                papermill(stage)
            except Exception as e:
                return ended(stage, e)
            ended(stage, None)
    else:
        order = sorted(todo, key=lambda s: (P.STAGES[s].lane, stages.index(s)))
        lanes: dict = {}
        failed = 0
        cwd = os.getcwd()
        os.chdir(nb_dir)  # every kernel starts here (papermill's own cwd= changes the whole process's directory)
        pool = cf.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nbft-lane")
        try:
            while order or lanes:
                while not failed and len(lanes) < jobs:
                    ready = [s for s in order if all(d in done for d in needs(s, stages, resolved))]
                    if not ready:
                        break
                    order.remove(ready[0])
                    started(ready[0])
                    lanes[pool.submit(papermill, ready[0])] = ready[0]
                if not lanes:
                    break  # what is left waits for a stage that failed
                finished, _ = cf.wait(lanes, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    failed = ended(lanes.pop(f), f.exception()) or failed
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            os.chdir(cwd)
        if failed:
            return failed
    runs.write_status(run_dir, state="ok", total_seconds=round(time.perf_counter() - t_all, 1))
    _write_index(run_dir)
    print_summary(run_dir, stages)
    return 0


def bad_input() -> tuple[type[BaseException], ...]:
    """The errors that are the user's input, not a bug in nbft: one line and exit 2 (anything else raised while
    checking the input is shown in full). nbft's own error types (``data`` and ``models`` once imported: no error
    of theirs can come before), a name that is taken, a file that is missing or cannot be read."""
    own = [P.ParamError, runs.RunError, files.DecodeError]
    own += [getattr(sys.modules[m], name) for m, name in (("nbft.data", "DataError"), ("nbft.models", "ModelError"),
                                                          ("nbft.ship", "ExportError"), ("nbft.serve", "ServeError"))
            if m in sys.modules]
    return (*own, FileExistsError, FileNotFoundError, PermissionError)


def _bad(cmd: str, e: BaseException) -> int:
    print(f"nbft {cmd}: error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_run(args) -> int:
    _offline_env()
    if args.resume:
        return cmd_resume(args)
    try:
        params_file = args.params or DEFAULT_PARAMS
        resolved, stages, name = _prepare(params_file, args.set, args.only, args.name)
        jobs = pick_jobs(args.jobs, resolved)
        run_dir = runs.reserve_run_dir(name, prefix=Path(params_file).stem)
    except bad_input() as e:
        return _bad("run", e)
    return execute(resolved, stages, run_dir, args.progress, args.verbose, jobs=jobs)


def prepare_resume(name: str, params_file: str | None, sets: list[str]) -> tuple[dict, list[str], Path, dict]:
    """Check that run ``name`` can be continued and with what: its own params.yaml (``--params`` must agree
    with it; ``--set`` may change parameters of the stages still to run, and is recorded), its stages in
    their order, which of them ended ok. Raises ParamError/RunError with the reason."""
    root = runs.runs_root()
    run_dir = runs.run_dir(name, root, "--resume")
    if not run_dir.is_dir():
        known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        close = difflib.get_close_matches(name, known, n=1)
        raise runs.RunError(f"--resume {name}: no run folder {run_dir}" + (f"; did you mean '{close[0]}'?" if close else ""))
    unreadable = runs.RunError(f"--resume {name}: {run_dir / 'status.json'} is missing or unreadable; this run "
                               "cannot be resumed (start a new one)")
    try:
        status = json.loads(files.read_text(run_dir / "status.json"))
    except (OSError, ValueError, RecursionError):
        raise unreadable from None
    stage_states = status.get("stages") if isinstance(status, dict) else None
    if not isinstance(stage_states, dict) or not all(s in P.STAGES for s in stage_states):
        raise unreadable
    state = runs.run_state(run_dir, status)
    if state == "ok":
        raise runs.RunError(f"--resume {name}: the run finished ok; nothing to resume")
    if state == "running":
        raise runs.RunError(f"--resume {name}: the run is still running: "
                            f"{runs.lock_holder(run_dir, runs.lock_info(run_dir) or {})}")
    own = run_dir / "params.yaml"
    original = P.resolve(own)
    if params_file:
        given = P.resolve(params_file)
        _absolutize_paths(given)
        for p in given.values():
            p.run_name = name
        diff = _param_diff(original, given)
        if diff:
            raise P.ParamError(f"--resume {name}: --params {params_file} differs from the run's own {own} in "
                               + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                               + ". A resume runs with the run's parameters; change one with --set (recorded in the run)")
    resolved = P.resolve(own, sets)
    _absolutize_paths(resolved)
    stages = list(stage_states)
    done = [s for s in stages if stage_states[s] == "ok"]
    changed = _param_diff(original, resolved)
    frozen = [c for c in changed if c.split(".", 1)[0] in done]
    if frozen:
        raise P.ParamError(f"--resume {name}: {'; '.join(frozen)}: that stage already finished ok with the old value "
                           "(a resume does not run it again); start a new run instead")
    todo = [s for s in stages if s not in done]
    if todo:
        preflight(resolved, todo)
    return resolved, stages, run_dir, {"done": done, "state": state, "set": list(sets), "changed": changed}


def _param_diff(a: dict, b: dict) -> list[str]:
    """``stage.key: old -> new`` for every parameter that differs (run_name aside)."""
    out = []
    for stage in a:
        da, db = dataclasses.asdict(a[stage]), dataclasses.asdict(b[stage])
        out += [f"{stage}.{k}: {da[k]!r} -> {db.get(k)!r}" for k in da if k != "run_name" and da[k] != db.get(k)]
    return out


def cmd_resume(args) -> int:
    """``nbft run --resume NAME``: continue a crashed, interrupted or failed run where it stopped."""
    if args.only or args.name:
        return _bad("run", P.ParamError("--resume continues the run's own stages under its own name: "
                                        "leave out --only and --name"))
    try:
        resolved, stages, run_dir, resume = prepare_resume(args.resume, args.params, args.set)
        jobs = pick_jobs(args.jobs, resolved)
    except bad_input() as e:
        return _bad("run", e)
    try:
        return execute(resolved, stages, run_dir, args.progress, args.verbose, resume=resume, jobs=jobs)
    except runs.RunError as e:  # another resume took the lock first
        return _bad("run", e)


def cmd_train(args) -> int:
    """``nbft train STAGE [STAGE ...] --run NAME``: stages in every process a launcher started (``accelerate
    launch``, torchrun, Slurm's ``srun``; docs/distributed.md). Each process executes the stages' notebooks in
    order; the trainers in those kernels train together over all the processes (the launcher's ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR`` reach them). Rank 0 writes into ``runs/NAME`` (made if new): executed
    notebooks, reports, metrics, artifacts. The other ranks write into a scratch copy, which sees the artifacts
    of the run's other stages, and is deleted. A stage that already ended ok in the run is refused."""
    import tempfile

    _offline_env()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        run_dir = runs.run_dir(args.run, key="--run")
        own = run_dir / "params.yaml"  # a run that exists keeps its own parameters
        params_file = args.params or (own if own.is_file() else DEFAULT_PARAMS)
        stages = _stage_names(args.stages)
        resolved = P.resolve(params_file, args.set)
        _absolutize_paths(resolved)
        status = runs.read_json(run_dir / "status.json", {}) if run_dir.is_dir() else {}
        done = [s for s in stages if (status.get("stages") or {}).get(s) == "ok"]
        if done:
            raise P.ParamError(f"--run {args.run}: {', '.join(done)} already ended ok in that run (its results are "
                               "kept: train into a new run)")
        if rank == 0:
            preflight(resolved, stages)
    except bad_input() as e:
        return _bad("train", e)
    label = f"nbft train (rank {rank} of {world})"
    if rank == 0:
        if not run_dir.is_dir():
            run_dir = runs.reserve_run_dir(args.run)
        return execute(resolved, stages, run_dir, args.progress, args.verbose, label=label)
    deadline = time.time() + 300
    while not run_dir.is_dir() and time.time() < deadline:  # rank 0 makes it
        time.sleep(0.5)
    with tempfile.TemporaryDirectory(prefix=f"nbft-rank{rank}-") as tmp:
        scratch = Path(tmp) / args.run
        (scratch / "artifacts").mkdir(parents=True)
        for other in sorted((run_dir / "artifacts").glob("*")):  # what the stages read, from the real run
            if other.is_dir() and other.name not in stages:
                (scratch / "artifacts" / other.name).symlink_to(other, target_is_directory=True)
        return execute(resolved, stages, scratch, False, args.verbose, label=label)


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
    """``<sweep>__<key>-<value>_...``: any character ``params.check_run_name`` refuses becomes '-'."""
    tag = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items())
    return f"{sweep}__" + re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)


def cmd_sweep(args) -> int:
    """One run per grid point (every combination), then one comparison report over them. Every point is
    validated (parameters, inputs, a free run name) before any folder is made; then the sweep's folder and
    every point's folder are reserved at once."""
    import itertools

    _offline_env()
    params_file = args.params or DEFAULT_PARAMS
    reserved: list[Path] = []
    try:
        grid = parse_grid(args.grid)
        if not grid:
            raise P.ParamError("--grid: give at least one key=value1,value2")
        if args.name:
            runs.check_free(args.name)
            sweep_name = args.name
        else:
            sweep_name = runs.new_run_name(Path(params_file).stem + "-sweep")
            sweep_name += next((f"-{i}" for i in range(2, 10_000) if not (runs.runs_root() / f"{sweep_name}-{i}").exists()),
                               "") if (runs.runs_root() / sweep_name).exists() else ""
        n_points = math.prod(len(v) for v in grid.values())
        if n_points > args.max_points:
            raise P.ParamError(f"--grid: {n_points} points ({' x '.join(str(len(v)) for v in grid.values())}), more "
                               f"than --max-points {args.max_points}: each point is a whole run; narrow the grid or "
                               "raise --max-points")
        planned = []
        for i, point in enumerate((dict(zip(grid, combo)) for combo in itertools.product(*grid.values())), 1):
            said = ", ".join(f"{k}={v}" for k, v in point.items())
            if n_points > 1 and sys.stderr.isatty() or n_points >= 10:
                print(f"nbft sweep: checking point {i}/{n_points} ({said})", file=sys.stderr, flush=True)
            name = _point_name(sweep_name, point)
            try:
                runs.run_dir(name, key="the point's run name")
                planned.append((point, *_prepare(params_file, args.set + [f"{k}={v}" for k, v in point.items()],
                                                 args.only, name)))
            except bad_input() as e:  # say which point: the same message for every point would not
                raise type(e)(f"--grid point {i} of {n_points} ({said}): {e}") from None
        names = [name for *_, name in planned]
        if len(set(names)) != len(names):
            raise P.ParamError(f"--grid: two points give the same run name ({', '.join(names)})")
        report_params = P.resolve(params_file, args.set)["99_report"]
        jobs = pick_jobs(args.jobs, planned[0][1])
        for name in [sweep_name, *names]:
            reserved.append(runs.reserve_run_dir(name))
    except bad_input() as e:
        for d in reserved:  # empty folders this sweep made before another process took a name
            with contextlib.suppress(OSError):
                d.rmdir()
        return _bad("sweep", e)
    sweep_dir, point_dirs = reserved[0], reserved[1:]

    print(f"nbft sweep: {len(planned)} runs over {', '.join(grid)} -> {sweep_dir}", flush=True)
    codes = {}
    for n, ((point, resolved, stages, _), run_dir) in enumerate(zip(planned, point_dirs), 1):
        label = f"nbft sweep [{n}/{len(planned)}] " + " ".join(f"{k}={v}" for k, v in point.items())
        codes[run_dir.name] = execute(resolved, stages, run_dir, args.progress, args.verbose, label=label, jobs=jobs)
        if codes[run_dir.name] > 128:  # interrupted: stop the sweep
            break
    files.write_json(sweep_dir / "sweep.json", {
        "grid": grid, "params": params_file, "set": args.set, "only": args.only,
        "points": [{"run": run_dir.name, "values": point, "exit_code": codes.get(run_dir.name)}
                   for (point, *_), run_dir in zip(planned, point_dirs)]}, indent=2)
    if any(c > 128 for c in codes.values()):
        return max(codes.values())
    done = [run_dir.name for run_dir in point_dirs if (run_dir / "metrics.json").exists()]
    if not done:
        print("nbft sweep: no run recorded any metrics; no comparison report", file=sys.stderr)
        return EXIT_FAILED
    report_params.compare_runs = done
    code = execute({"99_report": report_params}, ["99_report"], sweep_dir, args.progress, args.verbose,
                   label="nbft sweep: comparison report")
    print(f"nbft sweep: comparison report {sweep_dir / '99_report.html'}, index {sweep_dir / 'index.html'}")
    return code if code > 128 else EXIT_FAILED if code or any(codes.values()) else 0


def cmd_vendor(args) -> int:
    """The widget renderer (npm) for offline HTML reports, and llama.cpp's GGUF converter (from the llama-cpp-python
    source distribution on PyPI) for 08_export; each fetched once into the model cache."""
    import importlib
    import importlib.util

    from . import export

    ship = importlib.import_module(f"nbft.{P.STAGES['08_export'].module}")  # the stage's module, by the stage table
    try:
        for package, path in export.vendor().items():
            print(f"{package}: {path}")
        if importlib.util.find_spec("llama_cpp") is not None:
            print(f"llama.cpp's converter: {ship.fetch_converter()}")
        else:
            print("llama.cpp's converter: skipped (llama-cpp-python is not installed: pip install -e '.[export]')")
    except (OSError, ship.ExportError) as e:
        print(f"nbft vendor: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _existing_run(name: str, key: str) -> Path:
    """The folder of run ``name``, which must exist (RunError naming the closest run otherwise)."""
    root = runs.runs_root()
    run_dir = runs.run_dir(name, root, key)
    if not run_dir.is_dir():
        known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        close = difflib.get_close_matches(name, known, n=1)
        raise runs.RunError(f"{key} {name}: no run folder {run_dir}" + (f"; did you mean '{close[0]}'?" if close else ""))
    return run_dir


def cmd_export(args) -> int:
    """``nbft export RUN``: 08_export on a model run RUN saved (its own parameters, ``--stage``/``--model`` picking
    the model, ``--formats`` the GGUF files): a new export folder under ``artifacts/08_export/``, the stage's
    notebook and report, its metrics. Everything is checked (the run, the model, the formats, the port, the tools)
    before anything is written."""
    import importlib

    ship = importlib.import_module(f"nbft.{P.STAGES['08_export'].module}")  # the stage's module, by the stage table
    _offline_env()
    try:
        run_dir = _existing_run(args.run, "RUN")
        stage = _stage_names([args.stage])[0]
        name = stage if not args.model else f"{stage}/{args.model}"
        if args.model:
            inside = [s.name for s in runs.saved_models(run_dir) if s.name.split("/")[0] == stage]
            tails = [n for n in inside if n == name or n.endswith("/" + args.model)]
            name = tails[0] if len(tails) == 1 else name
        saved = ship.find_model(run_dir, name)
        own = run_dir / "params.yaml"
        sets = [*args.set, f"08_export.export_model={saved.name}"]
        if args.formats is not None:
            sets.append(f"08_export.formats=[{', '.join(args.formats)}]")
        serve_format = args.serve_format
        if serve_format is None and args.formats is not None:  # served: q8_0 when written, else the first written
            serve_format = "q8_0" if "q8_0" in args.formats else (args.formats or [""])[0]
        if serve_format is not None:
            sets.append(f"08_export.serve_format={serve_format!r}")
        if args.port is not None:
            sets.append(f"08_export.port={args.port}")
        resolved = P.resolve(own if own.is_file() else DEFAULT_PARAMS, sets)
        _absolutize_paths(resolved)
        resolved["08_export"].run_name = run_dir.name
        state = runs.run_state(run_dir, runs.read_json(run_dir / "status.json", {}))
        if state == "running":
            raise runs.RunError(f"RUN {args.run}: still running: {runs.lock_holder(run_dir, runs.lock_info(run_dir) or {})}")
        preflight(resolved, ["08_export"])
    except bad_input() as e:
        return _bad("export", e)
    rc = execute({"08_export": resolved["08_export"]}, ["08_export"], run_dir, args.progress, args.verbose,
                 label="nbft export")
    export_dir = runs.read_json(run_dir / "metrics.json", {}).get("08_export", {}).get("export_dir")
    report = run_dir / "08_export.html"
    if rc == 0 and export_dir and report.is_file():  # each export keeps its own report (the run's is the latest)
        folder = run_dir / "artifacts" / "08_export" / Path(export_dir).name
        shutil.copy2(report, folder / "report.html")
        print(f"export: {folder}")
    return rc


def cmd_serve(args) -> int:
    """``nbft serve RUN``: the newest export's GGUF (``--format``) behind llama-cpp-python's OpenAI-compatible
    server on 127.0.0.1 until Ctrl-C. Exit 2 for a run without an export, a format it did not write, a port in use,
    a server that does not come up (its log's tail shown)."""
    from . import serve

    try:
        run_dir = _existing_run(args.run, "RUN")
        exports = sorted((d for d in (run_dir / "artifacts" / "08_export").glob("*") if (d / "gguf").is_dir()),
                         key=lambda d: d.stat().st_mtime)
        if args.export:
            exports = [d for d in exports if d.name == args.export]
        if not exports:
            raise runs.RunError(f"RUN {args.run}: no GGUF export" + (f" named {args.export}" if args.export else "")
                                + f": run `nbft export {args.run}` first")
        gguf = exports[-1] / "gguf" / f"model-{args.format}.gguf"
        if not gguf.is_file():
            have = sorted(f.stem.removeprefix("model-") for f in gguf.parent.glob("model-*.gguf"))
            raise runs.RunError(f"--format {args.format}: export {exports[-1].name} has no such file; it has "
                                f"{', '.join(have) or 'none'}")
        serve.check_port(args.port)
    except (*bad_input(), serve.ServeError) as e:
        return _bad("serve", e)
    log = exports[-1] / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.log"

    def stop(signum, frame):  # SIGTERM (a service manager, kill) stops the server as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with serve.server(gguf, args.port, n_threads=cpu_count(), timeout_s=args.timeout, log=log) as s:
            print(f"serving {files.relative(gguf)} at {s.url} (model '{s.model}'); log: {files.relative(log)}")
            print(f"  openai.OpenAI(base_url='{s.url}', api_key='none').chat.completions.create(model='{s.model}', "
                  "messages=[{'role': 'user', 'content': 'Hello'}])")
            print("Ctrl-C stops it.", flush=True)
            while True:
                time.sleep(3600)
    except serve.ServeError as e:
        return _bad("serve", e)
    except KeyboardInterrupt:
        print("\nnbft serve: stopped", file=sys.stderr)
        return 0


#: What the stage kernels import, at the top of a notebook or inside nbft's functions. ``nbft precompile`` (the
#: Makefile's install, after ``pip install --no-compile``) imports them once with bytecode writing on: pip's own
#: compile step byte-compiles every module of every package (a minute on 2 cores, most of it never imported), and
#: where ``PYTHONDONTWRITEBYTECODE`` is set nothing else would write them, so each kernel would compile its imports
#: again (issue 16).
PRECOMPILE = (
    *sorted({f"nbft.{m}" for s in P.STAGE_TABLE for m in (s.module, *s.also)}),  # the stage modules (the table)
    "nbft.cli", "nbft.export", "nbft.tracking", "nbft.widgets",
    "transformers:LlamaForCausalLM", "transformers:LlamaForSequenceClassification", "transformers:BertModel",
    "transformers:AutoModelForCausalLM", "transformers:Trainer", "transformers:DataCollatorWithPadding",
    "trl:SFTTrainer", "trl:GRPOTrainer", "trl:RLOOTrainer", "trl:DPOTrainer", "trl:KTOTrainer", "trl:RewardTrainer",
    "trl:DistillationTrainer", "trl.kernels.chunked_logprob", "peft:get_peft_model", "accelerate", "datasets",
    "faiss", "sentence_transformers:SentenceTransformer", "rouge_score.rouge_scorer", "sacrebleu", "sklearn.linear_model", "sklearn.model_selection",
    "sklearn.metrics", "sklearn.pipeline", "sklearn.decomposition", "matplotlib.pyplot", "ipywidgets",
    "IPython.display", "ipykernel.kernelapp", "ipykernel.ipkernel", "papermill", "nbconvert:HTMLExporter",
    "nbformat", "yaml", "lm_eval.evaluator", "lm_eval.models.huggingface", "lm_eval.tasks",
    "openai", "gguf", "llama_cpp",  # nbft.serve.chat, nbft.ship (the export extra)
)


def cmd_precompile(args) -> int:
    """Import ``PRECOMPILE`` (``module`` or ``module:attribute``, for packages that load their parts lazily) with
    bytecode writing on (see there); what is not installed is skipped and named."""
    import importlib
    import importlib.util
    import py_compile
    import time

    sys.dont_write_bytecode = False
    t0, missing = time.perf_counter(), []
    for name in PRECOMPILE:
        module, _, attribute = name.partition(":")
        try:
            loaded = importlib.import_module(module)
            if attribute:
                getattr(loaded, attribute)
        except (ImportError, AttributeError):
            missing.append(name)
    for module in list(sys.modules.values()):  # imported before the flag went off: nbft's command line itself
        source = getattr(module, "__file__", None) or ""
        if source.endswith(".py") and not Path(importlib.util.cache_from_source(source)).exists():
            try:
                py_compile.compile(source, doraise=True)
            except (OSError, py_compile.PyCompileError):
                pass  # a read-only location: that module compiles in memory, as before
    print(f"nbft precompile: {len(PRECOMPILE) - len(missing)} modules and their imports byte-compiled in "
          f"{time.perf_counter() - t0:.0f} s" + (f" (not installed: {', '.join(missing)})" if missing else ""))
    return 0


def cmd_list(args) -> int:
    rows = runs.list_runs()
    if not rows:
        print(f"no runs under {runs.runs_root()}")
        return 0
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        head = r.get("error") or "  ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items())
        print(f"{r['name']:<{w}}  {r['state']:<11}  {r['stages']:<24}  {head}")
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
    r.add_argument("--params", help=f"parameter profile (YAML; default {DEFAULT_PARAMS})")
    r.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (e.g. 01_data_prep or sft)")
    r.add_argument("--name", help="run folder name (must not exist yet)")
    r.add_argument("--resume", metavar="NAME", help="continue a crashed, interrupted or failed run with its own "
                   "params.yaml: stages that ended ok are skipped, training resumes from its last checkpoint")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter: key=value or section.key=value (repeatable)")
    r.add_argument("--jobs", default="1", metavar="N", help="stages at once (a stage waits for the ones it reads), "
                   "the cores shared between them; auto: 2 on a CPU, 1 on a GPU (default 1)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no per-cell progress bar")
    r.add_argument("--verbose", action="store_true", help="stream notebook output to the terminal")
    r.set_defaults(fn=cmd_run)
    sw = sub.add_parser("sweep", help="one run per grid point, then one comparison report")
    sw.add_argument("--params", help=f"parameter profile (YAML; default {DEFAULT_PARAMS})")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a parameter and its values (repeatable: every combination runs)")
    sw.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages at each point")
    sw.add_argument("--name", help="sweep name (its runs are <name>__<key>-<value>)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every point")
    sw.add_argument("--jobs", default="1", metavar="N", help="stages at once within each run (as nbft run --jobs)")
    sw.add_argument("--max-points", type=int, default=64, metavar="N",
                    help="refuse a grid of more points than this before validating any (default 64)")
    sw.add_argument("--no-progress", dest="progress", action="store_false")
    sw.add_argument("--verbose", action="store_true")
    sw.set_defaults(fn=cmd_sweep)
    tr = sub.add_parser("train", help="one stage in every process of accelerate launch / torchrun / srun; rank 0 "
                        "writes into runs/<run>/ (docs/distributed.md)")
    tr.add_argument("stages", nargs="+", metavar="STAGE", help="the stages, in order (e.g. 02_sft or sft)")
    tr.add_argument("--run", required=True, help="run folder name under runs/ (made by rank 0 if new)")
    tr.add_argument("--params", help=f"parameter profile (YAML; default {DEFAULT_PARAMS})")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    tr.add_argument("--no-progress", dest="progress", action="store_false")
    tr.add_argument("--verbose", action="store_true")
    tr.set_defaults(fn=cmd_train)
    vd = sub.add_parser("vendor", help="fetch the widget renderer for offline HTML reports (npm registry, once)")
    vd.set_defaults(fn=cmd_vendor)
    pc = sub.add_parser("precompile", help="byte-compile what the stage kernels import (after pip --no-compile)")
    pc.set_defaults(fn=cmd_precompile)
    ls = sub.add_parser("list", help="runs with status and headline metrics")
    ls.set_defaults(fn=cmd_list)
    ex = sub.add_parser("export", help="08_export on a model a run saved: merged weights, GGUF, Modelfile, model card, "
                        "the round trip and the served check, into a new folder under artifacts/08_export/")
    ex.add_argument("run", metavar="RUN", help="the run (a name under runs/)")
    ex.add_argument("--stage", default="02_sft", help="the stage whose model to export (default 02_sft)")
    ex.add_argument("--model", help="a model of that stage by name (03_peft: methods/dora or dora; 04_rlhf: "
                    "grpo_policy); default: the stage's main model")
    ex.add_argument("--formats", nargs="*", metavar="FORMAT", help="GGUF formats (default: the run's parameters, "
                    "f16 q8_0 q4_k_m); none: merged weights only")
    ex.add_argument("--serve-format", help="the format served and checked through the openai client ('': none)")
    ex.add_argument("--port", type=int, help="the check's server port on 127.0.0.1 (default: a free one)")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    ex.add_argument("--no-progress", dest="progress", action="store_false")
    ex.add_argument("--verbose", action="store_true")
    ex.set_defaults(fn=cmd_export)
    sv = sub.add_parser("serve", help="serve a run's newest GGUF export over an OpenAI-compatible API on 127.0.0.1 "
                        "until Ctrl-C")
    sv.add_argument("run", metavar="RUN")
    sv.add_argument("--format", default="q8_0", choices=P.EXPORT_FORMATS,
                    help="which GGUF file of the export (default q8_0)")
    sv.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: a free one)")
    sv.add_argument("--export", help="an export folder's name (default: the newest)")
    sv.add_argument("--timeout", type=float, default=120.0, help="seconds the server may take to come up")
    sv.set_defaults(fn=cmd_serve)
    pp = sub.add_parser("params", help="show resolved parameters with help text")
    pp.add_argument("--params", default="params/default.yaml")
    pp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pp.add_argument("--defaults", action="store_true", help="the dataclass defaults (how params/default.yaml is made)")
    pp.add_argument("--sync-notebooks", action="store_true",
                    help="rewrite each notebook's parameters cell from its dataclass")
    pp.set_defaults(fn=cmd_params)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except bad_input() as e:  # an input error a command did not catch itself (nbft list with a bad runs folder, ...)
        return _bad(args.cmd, e)
    except KeyboardInterrupt:  # before or after a run executes (preflight, listing): nothing to record
        print(f"\nnbft {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
