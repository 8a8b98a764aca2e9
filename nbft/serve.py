"""Serving a GGUF file over llama-cpp-python's OpenAI-compatible server on 127.0.0.1, and asking it through the
official ``openai`` client.

``server(gguf)`` is a context manager: it checks the port before anything starts, launches
``python -m llama_cpp.server`` in its own process group (its stdout and stderr in a log file), waits until
``GET /v1/models`` answers 200, and on leaving the block (normally, on an exception, on Ctrl-C) sends the whole group
SIGTERM, then SIGKILL after ``STOP_GRACE_S``, and waits for it: no orphan. Two guards for a process that dies inside
the block (best effort): an ``atexit`` hook stops every server still running, and on Linux the server is started
with ``PR_SET_PDEATHSIG`` so the kernel kills it when the thread that started it is gone (a kernel killed with
SIGKILL runs no ``atexit``).

What the server does that matters for comparisons (llama-cpp-python 0.3.36, read from ``llama_cpp/server``):
- the model name ``/v1/models`` lists is ``--model_alias`` (here the GGUF's file stem; without it, the full path);
- with no ``--chat_format``, the GGUF's embedded ``tokenizer.chat_template`` is applied (Jinja2) unless it is
  byte-identical to one of three known templates (ChatML, Mistral, Llama-3), which map to the built-in formatter of
  that name;
- ``temperature: 0`` is greedy (llama.cpp's greedy sampler: no seed involved), but a request's ``repeat_penalty``
  defaults to 1.1: ``chat`` sends 1.0 so that greedy means what it means in transformers' ``generate``.

``llama-cpp-python[server]`` and ``openai`` come with the ``export`` extra (``pip install -e ".[export]"``); this
module imports neither at import time.
"""
from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

#: the hosts a server may listen on: this machine only (an API without TLS, its key in clear, is no public service)
HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1"}
#: seconds between SIGTERM to the server's process group and SIGKILL
STOP_GRACE_S = 10.0
#: log lines an error shows
LOG_TAIL_LINES = 40
#: seconds between two looks at /v1/models while the server loads
POLL_S = 0.1
#: how much ``chat`` penalizes repeats: none (llama-cpp-python's server default is 1.1, which greedy decoding in
#: transformers does not do)
REPEAT_PENALTY = 1.0
INSTALL_HINT = 'pip install -e ".[export]"'

# The child sets PR_SET_PDEATHSIG (killed when the thread that started it ends), checks its parent is still the one
# that started it (a parent gone before prctl would go unnoticed), then becomes ``python -m llama_cpp.server``.
_LAUNCHER = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit("nbft.serve: the process that started this server is gone")
os.execv(sys.executable, [sys.executable, "-m", "llama_cpp.server", *sys.argv[2:]])
"""

_running: dict[int, subprocess.Popen] = {}  # pid -> server, for the atexit guard
_running_lock = threading.Lock()
_guard_registered = False


class ServeError(RuntimeError):
    """A server that cannot start, does not answer or fails a request: the message names the GGUF, the port or the
    URL, and ends with the server's log tail where there is one. Never the API key."""


@dataclass
class Server:
    url: str  # "http://127.0.0.1:PORT/v1"
    port: int
    pid: int
    log: Path  # the server's stdout and stderr
    model: str  # the model name the server answers /v1/models with
    api_key: str | None
    load_seconds: float  # from launch to the first 200 on /v1/models

    def __repr__(self) -> str:  # the key never shown
        return (f"Server(url={self.url!r}, pid={self.pid}, model={self.model!r}, "
                f"api_key={'set' if self.api_key else None}, load_seconds={self.load_seconds:.2f})")


@dataclass
class Replies:
    replies: list[str]
    seconds: float  # wall time of all requests
    completion_tokens: int  # sum of usage.completion_tokens
    prompt_tokens: int

    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the system's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """ServeError when ``port`` on ``host`` cannot be bound (something listens there, or it is not a port); 0 (the
    system picks) is always fine. SO_REUSEADDR, as uvicorn binds: a port left in TIME_WAIT counts as free."""
    if port == 0:
        return
    if not 0 < port < 65536:
        raise ServeError(f"port {port} is not a port (1 to 65535)")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise ServeError(f"port {port} on {host} is in use ({err.strerror or err}): stop what listens there "
                             f"or choose another port") from None


def log_tail(log: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _with_tail(message: str, log: Path, kept: bool) -> ServeError:
    tail, where = log_tail(log), f"its log ({log})" if kept else "its log"  # a temporary log is gone afterwards
    return ServeError(f"{message}; {where} ends:\n{tail}" if tail else f"{message}; {where} is empty")


def _get_models(url: str, api_key: str | None, timeout: float) -> list[str] | None:
    """The model ids ``GET url/models`` lists, or None while the server does not answer 200 yet."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy: this machine
    try:
        with opener.open(urllib.request.Request(f"{url}/models", headers=headers), timeout=timeout) as r:
            if r.status != 200:
                return None
            return [m["id"] for m in json.load(r)["data"]]
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return None


def _stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds, the leader waited for; a second
    Ctrl-C while waiting kills at once (and is raised again)."""
    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    interrupted = None
    try:
        if proc.poll() is None:
            signal_group(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            except KeyboardInterrupt as err:
                interrupted = err
        signal_group(signal.SIGKILL)  # the leader, if still there, and anything it started
        proc.wait()
    finally:
        with _running_lock:
            _running.pop(proc.pid, None)
    if interrupted is not None:
        raise interrupted


def _stop_all_at_exit() -> None:
    with _running_lock:
        procs = list(_running.values())
    for proc in procs:
        with contextlib.suppress(Exception):
            _stop(proc, grace=2.0)


def _guard(proc: subprocess.Popen) -> None:
    global _guard_registered
    with _running_lock:
        _running[proc.pid] = proc
        if not _guard_registered:
            atexit.register(_stop_all_at_exit)
            _guard_registered = True


@contextlib.contextmanager
def server(gguf: str | Path, port: int = 0, *, host: str = "127.0.0.1", n_ctx: int = 2048, n_threads: int = 1,
           api_key: str | None = None, timeout_s: float = 120, log: str | Path | None = None,
           extra_args: Sequence[str] = ()) -> Iterator[Server]:
    """llama-cpp-python's OpenAI-compatible server on ``host``:``port`` (0: a free port) with ``gguf``, ready to
    answer (``/v1/models`` gave 200 within ``timeout_s``), stopped with its whole process group when the block ends.
    ``n_threads`` is used for generation and prompt processing both; ``extra_args`` go last on the command line
    (a flag given twice: the last one counts). With ``log`` None the log is a temporary file, removed afterwards."""
    if host not in HOSTS:
        raise ServeError(f"host {host!r}: the server listens on this machine only ({', '.join(HOSTS)})")
    host = HOSTS[host]
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ServeError(f"GGUF file {gguf} does not exist" if not gguf.exists() else f"{gguf} is not a file")
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServeError(f"serving {gguf.name} needs llama-cpp-python[server], which is not installed "
                         f"({INSTALL_HINT})")
    check_port(port, host)
    port = port or free_port(host)
    url = f"http://{host}:{port}/v1"
    alias = gguf.stem
    args = ["--model", str(gguf), "--model_alias", alias, "--host", host, "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    if api_key:
        args += ["--api_key", api_key]
    args += [str(a) for a in extra_args]
    temporary = log is None
    if temporary:
        fd, name = tempfile.mkstemp(prefix=f"nbft-serve-{alias}-", suffix=".log")
        os.close(fd)
        log = name
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    what = f"llama_cpp.server with {gguf} on port {port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _guard(proc)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise _with_tail(f"{what} exited with code {proc.returncode} before answering {url}/models", log, not temporary)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _with_tail(f"{what} did not answer {url}/models within {timeout_s:g} s", log, not temporary)
            names = _get_models(url, api_key, timeout=max(0.05, min(2.0, left)))
            if names is not None:
                break
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        s = Server(url=url, port=port, pid=proc.pid, log=log, model=names[0] if names else alias, api_key=api_key,
                   load_seconds=time.perf_counter() - start)
        yield s
    finally:
        try:
            _stop(proc)
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    log.unlink()


def _openai():
    try:
        import openai
    except ImportError:
        raise ServeError(f"asking the server needs the openai package, which is not installed ({INSTALL_HINT})") \
            from None
    return openai


def chat(s: Server, conversations: Sequence[list[dict]], max_tokens: int, *, timeout_s: float = 120,
         stop: Sequence[str] | None = None) -> Replies:
    """One greedy chat completion per conversation (``messages`` as given) through the official ``openai`` client,
    one request at a time; the replies in order, the wall time and the token counts the server reports."""
    openai = _openai()
    client = openai.OpenAI(base_url=s.url, api_key=s.api_key or "none", timeout=timeout_s, max_retries=0,
                           http_client=openai.DefaultHttpxClient(trust_env=False))  # no proxy for this machine
    options = {"stop": list(stop)} if stop else {}
    replies, completion_tokens, prompt_tokens = [], 0, 0
    start = time.perf_counter()
    try:
        for i, messages in enumerate(conversations):
            try:
                r = client.chat.completions.create(model=s.model, messages=list(messages), max_tokens=max_tokens,
                                                   temperature=0, extra_body={"repeat_penalty": REPEAT_PENALTY},
                                                   **options)
            except openai.OpenAIError as err:
                message = str(err)
                if s.api_key:
                    message = message.replace(s.api_key, "***")
                raise ServeError(f"{s.url}: conversation {i + 1} of {len(conversations)}: "
                                 f"{type(err).__name__}: {message}") from None
            if not r.choices:
                raise ServeError(f"{s.url}: conversation {i + 1} of {len(conversations)}: the reply has no choices")
            replies.append(r.choices[0].message.content or "")
            if r.usage is not None:
                completion_tokens += r.usage.completion_tokens or 0
                prompt_tokens += r.usage.prompt_tokens or 0
    finally:
        client.close()
    return Replies(replies=replies, seconds=time.perf_counter() - start, completion_tokens=completion_tokens,
                   prompt_tokens=prompt_tokens)
