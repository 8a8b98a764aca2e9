"""Datasets: load, normalize formats, render templates, clean, split, save.

Canonical record (what every format is normalized to)::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}],
     "reference": "...",   # the expected answer, for scoring (defaults to the reply)
     "check": "..."}        # name of the programmatic task check, if the data has one
    {"text": "..."}        # raw text (continued pretraining)

Rendered record (exactly what the model sees; ``prompt`` + ``completion``)::

    {"prompt": "<|im_start|>user\\n...", "completion": "...<|im_end|>", ...canonical fields}
"""
from __future__ import annotations

import csv
from collections import Counter
import dataclasses
import difflib
import errno
import json
import math
import os
import random
import re
import stat
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import files, params, tasks

FILE_SUFFIXES = (".jsonl", ".json", ".csv")
SPLITS = ("train", "validation", "test")

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class DataError(ValueError):
    """Bad input data; the message names the file and line or record, and the field."""


# ---------------------------------------------------------------- loading

MAX_DEPTH = 32  # nesting of a record's objects and lists: chat data needs 4; deeper is not data nbft reads
#: The most characters one record holds (a JSONL line, a JSON record, a CSV row, all its text fields together): no
#: training example, preference pair or question is this long, and refusing it before parsing or tokenizing keeps a
#: 50 MB line from costing minutes and gigabytes. 05's documents are read with ``MAX_DOCUMENT_CHARS``.
MAX_RECORD_CHARS = 1_000_000
MAX_DOCUMENT_CHARS = 20_000_000


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise DataError(f"duplicate key {k!r}")
        out[k] = v
    return out


class _Constant:
    """What JSON's non-standard ``NaN``, ``Infinity`` and ``-Infinity`` parse to (``json.loads``' ``parse_constant``):
    ``check_record`` refuses it naming the field, before it could become the text 'nan' or 'inf'."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _depth(obj: Any) -> int:
    """How deeply objects and lists nest in ``obj`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_record(rec: Any, where: str, max_chars: int = MAX_RECORD_CHARS) -> None:
    """Every value of a parsed record, walked once (iteratively): no ``NaN``/``Infinity`` (JSON has none; Python's
    parser lets them through), no text holding an unpaired surrogate (a ``\ud800`` escape: half a UTF-16 pair, no
    character; the tokenizer fails on it), nesting at most ``MAX_DEPTH`` and at most ``max_chars`` characters of text
    in all. Errors name ``where`` and the field (``messages[1].content``)."""
    total, stack = 0, [(rec, 1, "")]
    while stack:
        x, d, name = stack.pop()
        if isinstance(x, (dict, list)):
            if d > MAX_DEPTH:
                raise DataError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)")
            if isinstance(x, dict):
                stack.extend((v, d + 1, f"{name}.{k}" if name else str(k)) for k, v in x.items())
            else:
                stack.extend((v, d + 1, f"{name}[{j}]") for j, v in enumerate(x))
        elif isinstance(x, str):
            total += len(x)
            m = _SURROGATE.search(x)
            if m:
                raise DataError(f"{where}: field '{name or '(the record)'}' holds an unpaired surrogate "
                                f"{ascii(m.group())} at character {m.start() + 1}: half of a UTF-16 pair, not a "
                                "character (a \\ud800-\\udfff escape without its partner); fix the text")
        elif isinstance(x, _Constant) or (isinstance(x, float) and not math.isfinite(x)):
            raise DataError(f"{where}: field '{name or '(the record)'}' is {getattr(x, 'name', x)}, which is not "
                            "JSON (a number must be finite; write it as a string if it is text)")
    if total > max_chars:
        raise DataError(f"{where}: {total:,} characters of text; a record holds at most {max_chars:,} "
                        "(no training example is this long)")


def loads(text: str, where: str, check: bool = True, max_chars: int = MAX_RECORD_CHARS) -> Any:
    """One JSON document, strictly: duplicate keys, nesting deeper than ``MAX_DEPTH``, ``NaN``/``Infinity``, unpaired
    surrogates and more than ``max_chars`` of text are refused (``DataError`` naming ``where``; ``check=False``: only
    duplicates and nesting, for a document of many records checked one by one)."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_Constant)
    except DataError as e:
        raise DataError(f"{where}: {e} (JSON keeps only the last of duplicate keys)") from None
    except RecursionError:
        raise DataError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    if check:
        check_record(obj, where, max_chars)
    elif _depth(obj) > MAX_DEPTH:
        raise DataError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)")
    return obj


def _show(path: Any) -> str:
    """A path as a message shows it: at most 200 characters (the middle cut)."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


def input_path(path: str | Path, what: str = "data file", folder: bool = False) -> Path:
    """A path the user gave (``~`` expanded, symlinks followed but not resolved: its own name is kept), checked
    before it is opened: what is wrong is said, naming the path — not found, a ``~user`` with no such user, a
    symlink loop or a link to nothing, a name too long, a part that is not a folder, no permission, a folder (and the
    data files in it), a FIFO, a socket or a device (a FIFO is never opened: reading it would wait for a writer).
    ``folder``: a folder is what is wanted. Every OS error becomes a ``DataError``."""
    text = str(path)
    try:
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):
            user = expanded[1:].split("/", 1)[0]
            raise DataError(f"{_show(text)}: there is no user {user!r} on this machine (~{user} means that user's "
                            "home folder); write the path out")
        try:
            st = os.stat(expanded)
        except FileNotFoundError:
            if os.path.islink(expanded):
                raise DataError(f"{_show(text)}: a symbolic link to {_show(os.readlink(expanded))}, which does not "
                                "exist") from None
            raise DataError(f"{what} not found: {_show(text)}") from None
        except OSError as e:
            why = {errno.ELOOP: "a symbolic link loop (following the links leads back to a link already followed)",
                   errno.ENAMETOOLONG: "the path is too long for the file system (a name in it has more than 255 "
                                       "bytes, or the whole path more than 4096)",
                   errno.ENOTDIR: "a part of the path is a file, not a folder",
                   errno.EACCES: "no permission to reach it"}.get(e.errno, "cannot be read")
            raise DataError(f"{_show(text)}: {why} ({e.strerror})") from None
    except ValueError as e:  # a NUL character in the path
        if isinstance(e, DataError):
            raise
        raise DataError(f"{what} {_show(ascii(text))}: not a usable path ({e})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if folder:
            return Path(expanded)
        inside = []
        try:
            inside = sorted(e.name for e in os.scandir(expanded) if e.name.endswith(FILE_SUFFIXES))
        except OSError:
            pass
        listing = (f"; data files in it: {', '.join(inside[:5])}{f' and {len(inside) - 5} more' * (len(inside) > 5)}"
                   if inside else f"; it holds no {'/'.join(FILE_SUFFIXES)} file")
        raise DataError(f"{_show(text)}: a folder, not a {what}{listing if what == 'data file' else ''}")
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None if stat.S_ISREG(mode)
            else "not a regular file")
    if kind:
        raise DataError(f"{_show(text)}: {kind}, not a {what}; nbft reads its inputs more than once (the checks "
                        "before the run, then the notebook), so save the data to a file")
    return Path(expanded)


def read_text(path: str | Path) -> str:
    """A UTF-8 data file (a byte-order mark, as Excel writes, is dropped); errors name the file and line."""
    try:
        return files.read_text(path)
    except files.DecodeError as e:
        raise DataError(str(e)) from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a data file") from None
    except OSError as e:
        raise DataError(f"{_show(path)}: cannot be read ({e.strerror or e})") from None


def _lines(path: Path, max_chars: int = MAX_RECORD_CHARS):
    """(line number, text with its line end) of a UTF-8 file, streamed: a line is read up to the most bytes
    ``max_chars`` characters can take, so a line longer than that is refused without being read whole, decoded or
    parsed; a byte-order mark is dropped; a decode error names the line and column."""
    limit = 4 * max_chars + 2  # UTF-8 takes at most 4 bytes a character; + "\r\n"
    try:
        with open(path, "rb") as f:
            for i in range(1, 1 << 62):
                raw = f.readline(limit)
                if not raw:
                    return
                if len(raw) == limit and not raw.endswith(b"\n"):
                    raise DataError(f"{path} line {i}: longer than {max_chars:,} characters (more than {limit:,} "
                                    "bytes); a record holds at most that (no training example is this long)")
                if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path} line {i}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                    f"{e.start + 1}); save the file as UTF-8") from None
                n = len(text.rstrip("\r\n"))
                if n > max_chars:
                    raise DataError(f"{path} line {i}: {n:,} characters; a record holds at most {max_chars:,} "
                                    "(no training example is this long)")
                yield i, text
    except OSError as e:
        raise DataError(f"{_show(path)}: cannot be read ({e.strerror or e})") from None


def read_jsonl(path: str | Path, max_chars: int = MAX_RECORD_CHARS) -> list[tuple[str, dict]]:
    """Records of a JSONL file as (location, record) pairs, read a line at a time; errors name the file and line
    (and the field: ``check_record``). Only "\\n" ends a line: JSON strings may hold U+2028."""
    out = []
    for i, line in _lines(Path(path), max_chars):
        if not line.strip():
            continue
        try:
            rec = loads(line, f"{path} line {i}", max_chars=max_chars)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {i}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path} line {i}", rec))
    return out


def _read_json(path: Path) -> list[tuple[str, dict]]:
    try:
        data = loads(read_text(path), str(path), check=False)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{path} record {i}: expected a JSON object, got {type(rec).__name__}")
        check_record(rec, f"{path} record {i}")
        out.append((f"{path} record {i}", rec))
    return out


def _read_csv(path: Path) -> list[tuple[str, dict]]:
    """Rows of a CSV file with a header line, streamed; a row with more or fewer fields than the header is refused,
    naming its line, and so is a header that names a column twice, and a row of more than ``MAX_RECORD_CHARS``."""
    at = [0]  # the line read last (the reader's own count stops at the last whole row)

    def lines():
        for at[0], text in _lines(path):
            yield text

    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_RECORD_CHARS)  # the module's default (131,072) would refuse a long field as "not CSV"
    reader = csv.DictReader(lines())
    try:
        header = reader.fieldnames or []
        dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if dup is not None:
            raise DataError(f"{path} line 1: the header names column {dup!r} twice")
        out = []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if None in row:
                raise DataError(f"{where}: {len(header) + len(row[None])} fields, the header has {len(header)} "
                                f"({', '.join(header)}); quote a field that contains a comma")
            if any(v is None for v in row.values()):
                raise DataError(f"{where}: {sum(v is not None for v in row.values())} fields, the header has "
                                f"{len(header)} ({', '.join(header)})")
            check_record(row, where)
            out.append((where, dict(row)))
    except csv.Error as e:
        if "field limit" in str(e):
            raise DataError(f"{path} line {at[0]}: a field of more than {MAX_RECORD_CHARS:,} characters; a record "
                            f"holds at most {MAX_RECORD_CHARS:,} (no training example is this long)") from None
        raise DataError(f"{path} line {at[0]}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(limit)
    return out


READERS = {".jsonl": read_jsonl, ".json": _read_json, ".csv": _read_csv}
_SNIFFED: dict[str, str] = {}  # path -> what an extension-less file was read as, and why (once a process)


def sniff(path: Path) -> tuple[str, str]:
    """The format of a file with no suffix (a Hugging Face cache or git-annex blob), from its first lines: first
    non-blank character ``[``: JSON; ``{`` and the first line a whole object: JSONL (unless it is the only line and a
    single key holding a list that no record format has: ``{"data": [...]}``, JSON); ``{`` otherwise: JSON; anything
    else: CSV with a header. Returns (suffix, why)."""
    first, more = None, False
    for _, text in _lines(path):
        if not text.strip():
            continue
        if first is not None:
            more = True
            break
        first = text.strip().lstrip("\ufeff")
        if not first.startswith("{"):
            break
    if first is None:
        return ".jsonl", "it is empty"
    if first.startswith("["):
        return ".json", "it starts with '['"
    if not first.startswith("{"):
        return ".csv", "it does not start with '{' or '['; its first line is the header"
    try:
        obj = json.loads(first, parse_constant=_Constant)
    except ValueError:
        return ".json", "it starts with '{' and its first line is not a whole JSON object"
    fields = {f for fmt in FORMATS.values() for f in fmt.required}
    if (not more and isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list)
            and next(iter(obj)) not in fields):
        return ".json", "it is one object holding a list of records"
    return ".jsonl", "its first line is a JSON object"


def read_file(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a local file as (location, record) pairs; location names file and line. The format is the
    suffix of the name given (a symlink's own name, not its target's); with no suffix (a blob of the Hugging Face
    cache or git-annex), ``sniff`` tells it, said once in a printed line."""
    path = input_path(path)
    if path.suffix in READERS:
        return READERS[path.suffix](path)
    if path.suffix:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FILE_SUFFIXES)})")
    suffix, why = sniff(path)
    if str(path) not in _SNIFFED:
        _SNIFFED[str(path)] = f"{suffix[1:].upper()} ({why})"
        print(f"{path}: no file suffix; read as {_SNIFFED[str(path)]}")
    return READERS[suffix](path)


def is_file_spec(dataset: str) -> bool:
    """A local file (by suffix, by a path-like start, or an existing path) rather than 'demo' or a hub name."""
    return (dataset.endswith(FILE_SUFFIXES) or dataset.startswith((".", "/", "~"))
            or ("/" in dataset and os.path.lexists(dataset)))


def load_raw(dataset: str, seed: int = 0, n_examples: int = 320, hf_split: str = "train",
             demo_tasks: list[str] | tuple = ("json_qa",)) -> list[tuple[str, dict]]:
    """Raw records from 'demo', a local file or a Hugging Face dataset name."""
    if dataset == "demo":
        try:
            recs = tasks.demo_dataset(n_examples, seed, demo_tasks)
        except ValueError as e:
            raise DataError(str(e)) from None
        return [(f"demo record {i}", r) for i, r in enumerate(recs)]
    if is_file_spec(dataset):
        return read_file(dataset)
    check_hub(dataset, hf_split)
    try:
        import datasets

        ds = datasets.load_dataset(dataset, split=hf_split)
    except Exception as e:
        raise DataError(
            f"dataset '{dataset}' is not 'demo', not a {'/'.join(FILE_SUFFIXES)} file, and could not be "
            f"loaded from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    out = []
    for i, r in enumerate(ds):
        out.append((f"{dataset}[{hf_split}] row {i}", dict(r)))
        check_record(out[-1][1], out[-1][0])
    return out


# ---------------------------------------------------------------- several sources, mixed by weight

@dataclass(frozen=True)
class Source:
    """One source of a mixed ``dataset`` (a list in the parameters): ``path`` as ``dataset`` alone ('demo', a file,
    a hub name), its ``weight`` (its share of the mix is weight / the weights' sum), its ``format`` and ``cap`` (the
    most records read from it, the first ones; 0: all). ``name`` is how tables and metrics call it."""

    name: str
    path: str
    weight: float = 1.0
    format: str = "auto"
    cap: int = 0


def sources(dataset: str | list, data_format: str = "auto") -> list[Source]:
    """The sources of a list ``dataset`` (``params.check_sources`` checked them), defaults filled in: weight 1,
    format ``data_format``, no cap. Named by the file's name, 'demo' or the hub name; a name used twice gets
    ``#<index>``. A plain string: no sources (one dataset, read as it always was)."""
    if not isinstance(dataset, list):
        return []
    names = [Path(src["path"]).name if is_file_spec(src["path"]) else src["path"] for src in dataset]
    return [Source(f"{name}#{i}" if names.count(name) > 1 else name, src["path"], float(src.get("weight", 1)),
                   src.get("format", data_format), int(src.get("cap", 0)))
            for i, (name, src) in enumerate(zip(names, dataset))]


def apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split by ``weights`` into whole counts that sum to it: the largest-remainder method (each gets the
    floor of its exact share; the remainders' largest, first on ties, get one more)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))[:total - sum(counts)]:
        counts[i] += 1
    return counts


def mix_counts(available: list[int], weights: list[float], max_records: int = 0) -> list[int]:
    """How many records to take from each source: the largest mix whose shares are the weights' (apportioned
    exactly) that no source runs short of, at most ``max_records`` in all (0: no limit)."""
    shares = [w / sum(weights) for w in weights]
    total = min(math.floor(n / s + 1e-9) for n, s in zip(available, shares))
    if max_records:
        total = min(total, max_records)
    return [min(c, n) for c, n in zip(apportion(total, weights), available)]


def load_records(p) -> tuple[list[tuple[str, dict]], list[dict]]:
    """01_data_prep's raw records (location, record) and the same normalized, ``max_records`` applied.

    ``p.dataset`` a string: ``load_raw`` and ``normalize`` as always. A list of sources: each read and normalized
    with its own format (an error names its file and line), capped, then a seeded sample of each, as many as
    ``mix_counts`` says, shuffled together; each normalized record names its ``source``."""
    if not isinstance(p.dataset, list):
        raw = load_raw(p.dataset, p.seed, p.n_examples, p.hf_split, p.demo_tasks)
        if p.max_records:
            raw = raw[: p.max_records]
        return raw, normalize(raw, p.data_format)
    srcs = sources(p.dataset, p.data_format)
    read = []
    for i, src in enumerate(srcs):
        raw = load_raw(src.path, p.seed, p.n_examples, p.hf_split, p.demo_tasks)
        if src.cap:
            raw = raw[: src.cap]
        if not raw:
            raise DataError(f"dataset[{i}] ({src.path}): no records")
        read.append(list(zip(raw, normalize(raw, src.format))))
    counts = mix_counts([len(r) for r in read], [s.weight for s in srcs], p.max_records)
    rng = random.Random(p.seed)
    mixed = [(pair, {**rec, "source": src.name}) for src, pairs, n in zip(srcs, read, counts)
             for pair, rec in (pairs[i] for i in sorted(rng.sample(range(len(pairs)), n)))]
    rng.shuffle(mixed)
    return [pair for pair, _ in mixed], [rec for _, rec in mixed]


def formats_found(p, raw: list[tuple[str, dict]], records: list[dict]) -> dict[str, int]:
    """How many raw records were read as each format (their source's format, or the one detected for auto)."""
    fmt = {s.name: s.format for s in sources(p.dataset, p.data_format)}
    return dict(Counter(f if (f := fmt.get(r.get("source"), p.data_format)) != "auto" else detect_format(rec, where)
                        for (where, rec), r in zip(raw, records)))


def source_shares(records: list[dict], splits: dict[str, list[dict]] | None = None) -> dict[str, dict]:
    """Each source's count and share of the mix before cleaning (``records``: the mixed, normalized records) and,
    with ``splits``, after it (every split: what dedup and the filters kept) and in the training split. Empty for a
    single dataset (no record names a source)."""
    raw = Counter(r["source"] for r in records if "source" in r)
    if not raw:
        return {}
    clean = Counter(r.get("source") for recs in (splits or {}).values() for r in recs)
    train = Counter(r.get("source") for r in (splits or {}).get("train", []))
    out = {}
    for name, n in raw.items():
        out[name] = {"n_raw": n, "share_raw": round(n / sum(raw.values()), 4)}
        if splits is not None:
            out[name].update(n_clean=clean[name], share_clean=round(clean[name] / max(1, sum(clean.values())), 4),
                             n_train=train[name])
    return out


def dataset_shown(dataset: str | list, run_dir=None) -> str:
    """``dataset`` as a notebook prints it: a path relative to the project, or each source with its weight."""
    if not isinstance(dataset, list):
        return files.relative(dataset, run_dir)
    return " + ".join(f"{files.relative(s['path'], run_dir)} (weight {s.get('weight', 1)})" for s in dataset)


_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> str | None:
    """The variable that keeps ``datasets`` off the hub, as ``datasets.config`` reads them (HF_DATASETS_OFFLINE when
    set, else HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), or None when it may go online. ``nbft run`` sets
    HF_HUB_OFFLINE=1 unless you set it (``cli._offline_env``)."""
    if os.environ.get("HF_DATASETS_OFFLINE") is not None:
        return "HF_DATASETS_OFFLINE" if os.environ["HF_DATASETS_OFFLINE"].upper() in _TRUE else None
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.upper() in _TRUE:
        return "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    return None


def hub_cache(name: str) -> tuple[Path, list[Path]]:
    """Where ``datasets`` keeps a hub dataset it loaded once, and the cached copies there: the lookup its offline
    fallback does (``datasets.load.CachedDatasetModuleFactory``, datasets 5.2): folders
    ``<HF_DATASETS_CACHE>/<namespace>___<name in snake case>/<config>/<version>/<hash>/``. No network."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(os.path.expanduser(str(config.HF_DATASETS_CACHE))) / "___".join(parts)
    return root, sorted(p for p in root.glob("*/*/*") if p.is_dir())


def check_hub(dataset: str, hf_split: str = "train") -> None:
    """A Hugging Face dataset name, before a notebook loads it: a name of the hub's form (``name`` or
    ``namespace/name``), and, while the hub is offline (``hub_offline``), in the local datasets cache with the split
    asked for (when the cache records its splits); else a ``DataError`` naming it."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", dataset):
        raise DataError(f"dataset {_show(repr(dataset))}: no such file or folder, and not a Hugging Face dataset "
                        f"name (namespace/name); give 'demo', a {'/'.join(FILE_SUFFIXES)} file or a hub name")
    offline = hub_offline()
    if offline is None:
        return  # the hub answers in the notebook
    root, found = hub_cache(dataset)
    if not found:
        raise DataError(f"dataset '{dataset}': not in the local Hugging Face cache ({root.parent}) and the hub is "
                        f"offline ({offline}=1, nbft's default); load it once with {offline}=0 (network), or give "
                        f"a local {'/'.join(FILE_SUFFIXES)} file")
    splits: set[str] = set()
    for folder in found:
        try:
            splits |= set(json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))["splits"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if splits and re.fullmatch(r"\w+", hf_split) and hf_split not in splits:
        raise DataError(f"dataset '{dataset}': the cached copy ({root}) has no split {hf_split!r} (it has "
                        f"{', '.join(sorted(splits))}) and the hub is offline ({offline}=1); set hf_split")


# ---------------------------------------------------------------- formats

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "model": "assistant", "bot": "assistant"}


def _require(rec: dict, fields: Iterable[str], fmt: str, where: str) -> None:
    missing = [f for f in fields if f not in rec or rec[f] is None]
    if missing:
        raise DataError(f"{where}: missing required field(s) {', '.join(repr(m) for m in missing)} "
                        f"for {fmt} format (record has: {', '.join(sorted(rec)) or 'nothing'})")


ROLES = ("system", "user", "assistant")


def _text(rec: dict, key: str, where: str, name: str | None = None) -> str:
    """``rec[key]`` as text: a string, or a number (written as text); anything else is refused."""
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise DataError(f"{where}: field '{name or key}' must be text, got {type(v).__name__} {str(v)[:60]!r}")
    return v if isinstance(v, str) else str(v)


def check_messages(msgs: Any, where: str, key: str) -> list[dict]:
    """A non-empty list of {role, content} messages: role one of ``ROLES`` (the closest named otherwise),
    content a string (``where`` and ``key`` name it in errors)."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of messages")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: {key}[{j}] needs fields 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1)
            raise DataError(f"{where}: {key}[{j}].role: unknown role {role!r}; use {', '.join(ROLES)}"
                            + (f" (did you mean '{close[0]}'?)" if close else ""))
        if not isinstance(content, str):
            raise DataError(f"{where}: {key}[{j}].content must be a string, got {type(content).__name__} "
                            f"{str(content)[:60]!r}")
        out.append({"role": role, "content": content})
    return out


def _from_messages(rec: dict, where: str) -> list[dict]:
    return check_messages(rec["messages"], where, "messages")


def _from_sharegpt(rec: dict, where: str) -> list[dict]:
    conv = rec["conversations"]
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list")
    msgs = []
    for j, m in enumerate(conv):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise DataError(f"{where}: conversations[{j}] needs fields 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(m["from"]).lower())
        if role is None:
            close = difflib.get_close_matches(str(m["from"]).lower(), list(_SHAREGPT_ROLES), n=1)
            raise DataError(f"{where}: conversations[{j}].from: unknown speaker {str(m['from'])[:60]!r}"
                            + (f" (did you mean '{close[0]}'?)" if close else f"; use {', '.join(_SHAREGPT_ROLES)}"))
        msgs.append({"role": role, "content": _text(m, "value", where, f"conversations[{j}].value")})
    return msgs


def _from_alpaca(rec: dict, where: str) -> list[dict]:
    user = _text(rec, "instruction", where)
    if rec.get("input"):
        user += "\n\n" + _text(rec, "input", where)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec, "output", where)}]


def _from_prompt_completion(rec: dict, where: str) -> list[dict]:
    """Plain strings or message lists."""
    p, c = rec["prompt"], rec["completion"]
    msgs = (check_messages(p, where, "prompt") if isinstance(p, list)
            else [{"role": "user", "content": _text(rec, "prompt", where)}])
    return msgs + (check_messages(c, where, "completion") if isinstance(c, list)
                   else [{"role": "assistant", "content": _text(rec, "completion", where)}])


@dataclass(frozen=True)
class Format:
    """One row of ``FORMATS``: a record format nbft reads."""

    name: str
    marks: frozenset  # the fields that identify it (``data_format: auto``: the first row whose marks a record has)
    required: tuple[str, ...]  # the fields it needs
    messages: Callable[[dict, str], list[dict]] | None  # record, where -> chat messages (None: raw text)
    note: str  # how a user would recognize it


#: format -> its row, in the order ``detect_format`` tries them. Adding a format is adding a row (and its name to
#: ``params.FORMATS``).
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("messages", frozenset({"messages"}), ("messages",), _from_messages, "messages (role/content)"),
    Format("sharegpt", frozenset({"conversations"}), ("conversations",), _from_sharegpt, "conversations (from/value)"),
    Format("alpaca", frozenset({"instruction"}), ("instruction", "output"), _from_alpaca,
           "instruction/input/output (Alpaca)"),
    Format("prompt_completion", frozenset({"prompt", "completion"}), ("prompt", "completion"),
           _from_prompt_completion, "prompt/completion"),
    Format("text", frozenset({"text"}), ("text",), None, "text"),
]}


def detect_format(rec: dict, where: str = "") -> str:
    for fmt in FORMATS.values():
        if fmt.marks <= rec.keys():
            return fmt.name
    raise DataError(f"{where}: cannot tell the format from fields {sorted(rec)[:20]}; expected one of: "
                    + ", ".join(f.note for f in FORMATS.values()))


def normalize_record(rec: dict, where: str, fmt: str = "auto") -> dict:
    """One raw record -> canonical form (see module docstring)."""
    fmt = detect_format(rec, where) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DataError(f"data_format: unknown format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    row = FORMATS[fmt]
    _require(rec, row.required, fmt, where)
    if row.messages is None:
        return {"text": _text(rec, "text", where)}
    msgs = row.messages(rec, where)
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's reply (got role {msgs[-1]['role']!r})")
    if not any(m["role"] == "user" for m in msgs):
        raise DataError(f"{where}: no user message before the reply")
    out = {"messages": msgs, "reference": _text(rec, "reference", where) if rec.get("reference") is not None
           else msgs[-1]["content"]}
    for key in ("check", "task"):
        if rec.get(key):
            out[key] = _text(rec, key, where)
    return out


def normalize(raw: list[tuple[str, dict]], fmt: str = "auto") -> list[dict]:
    return [normalize_record(rec, where, fmt) for where, rec in raw]


# ---------------------------------------------------------------- templates

ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Response:\n"

#: Jinja for every row but ``chat``, applied by the tokenizer (``tokenizer.apply_chat_template(chat_template=...)``,
#: the tokenizer's special tokens such as ``eos_token`` in scope). Messages are written as they are (not trimmed), so a
#: reply is found exactly where the template puts it.
_CHATML = (r"{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
           r"{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")
_PREAMBLE = (r"{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the "
             r"request.\n\n' }}")  # ALPACA_TEMPLATE's first paragraph
_ALPACA = (r"{%- set ns = namespace(pending=[], started=false) -%}{%- for m in messages -%}"
           r"{%- if m['role'] != 'assistant' -%}{%- set ns.pending = ns.pending + [m['content']] -%}{%- else -%}"
           r"{%- if not ns.started -%}" + _PREAMBLE + r"{%- endif -%}"
           r"{{ '### Instruction:\n' + ns.pending | join('\n\n') + '\n\n### Response:\n' + m['content'] }}"
           r"{{ eos_token }}{{ '\n\n' }}{%- set ns.pending = [] -%}{%- set ns.started = true -%}{%- endif -%}"
           r"{%- endfor -%}{%- if add_generation_prompt -%}{%- if not ns.started -%}" + _PREAMBLE + r"{%- endif -%}"
           r"{{ '### Instruction:\n' + ns.pending | join('\n\n') + '\n\n### Response:\n' }}{%- endif -%}")
_LLAMA3 = (r"{%- for m in messages -%}"
           r"{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
           r"{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
           r"{%- endif -%}")
_ZEPHYR = (r"{%- for m in messages -%}{{ '<|' + m['role'] + '|>\n' + m['content'] }}{{ eos_token }}{{ '\n' }}"
           r"{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}")
# no system role in [INST] or gemma: system messages open the next user turn, a blank line after them
_MISTRAL = (r"{%- set ns = namespace(system='') -%}{%- for m in messages -%}"
            r"{%- if m['role'] == 'system' -%}{%- set ns.system = ns.system + m['content'] + '\n\n' -%}"
            r"{%- elif m['role'] == 'user' -%}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}"
            r"{%- set ns.system = '' -%}{%- else -%}{{ ' ' + m['content'] }}{{ eos_token }}{%- endif -%}{%- endfor -%}")
_VICUNA = (r"{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + ' ' }}{%- else -%}"
           r"{{ 'A chat between a curious user and an artificial intelligence assistant. The assistant gives "
           r"helpful, detailed, and polite answers to the user\'s questions. ' }}{%- endif -%}"
           r"{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ 'USER: ' + m['content'] + ' ASSISTANT:' }}"
           r"{%- elif m['role'] == 'assistant' -%}{{ ' ' + m['content'] }}{{ eos_token }}{%- endif -%}{%- endfor -%}")
_GEMMA = (r"{%- set ns = namespace(system='') -%}{%- for m in messages -%}"
          r"{%- if m['role'] == 'system' -%}{%- set ns.system = ns.system + m['content'] + '\n\n' -%}"
          r"{%- elif m['role'] == 'user' -%}"
          r"{{ '<start_of_turn>user\n' + ns.system + m['content'] + '<end_of_turn>\n' }}{%- set ns.system = '' -%}"
          r"{%- else -%}{{ '<start_of_turn>model\n' + m['content'] + '<end_of_turn>\n' }}{%- endif -%}{%- endfor -%}"
          r"{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


@dataclass(frozen=True)
class Template:
    """One row of ``TEMPLATES``: a chat template nbft renders conversations with."""

    name: str
    jinja: str | None  # applied by the tokenizer (``apply_chat_template(chat_template=...)``); None: its own
    end: str  # the text that ends every reply, as the template writes it ("": the tokenizer's EOS token)
    note: str  # where it comes from, and what differs from the original
    lead: str = ""  # what the template writes between the generation prompt and the reply (a BPE tokenizer puts
    #                 it in the reply's first token, so the prompt ends before it)


#: template -> its row. A rendered prompt (``render_prompt``) ends where the reply starts (before ``lead``); each reply
#: is followed by the row's end (``end_of_turn``) and the template's whitespace before the next turn, which does not
#: train (``reply_spans``). Generation stops at EOS and, where the end is other text, at that text (``stops``). No row
#: writes a BOS token: SmolLM2's BOS is ``<|im_start|>``, and a template's own BOS belongs to its model's tokenizer.
#: Adding a template is adding a row (and its name to ``params.TEMPLATES``).
TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("chat", None, "", "the model's own chat template (SmolLM2: ChatML with a default system prompt)"),
    Template("chatml", _CHATML, "<|im_end|>", "ChatML (OpenAI, Qwen, SmolLM2) without a default system prompt"),
    Template("alpaca", _ALPACA, "", "Alpaca's preamble, one Instruction/Response block per exchange (the system and "
             "user messages before a reply are its instruction, a blank line apart), each reply ended by EOS "
             "(LLaMA-Factory's multi-turn Alpaca)"),
    Template("llama-3", _LLAMA3, "<|eot_id|>", "Llama 3: role headers, each message ended by <|eot_id|> (no "
             "<|begin_of_text|>, content not trimmed); the header's second newline goes with the reply, where a "
             "GPT-2-style tokenizer puts it (a prompt ending in two newlines is one other token)", lead="\n"),
    Template("zephyr", _ZEPHYR, "", "Zephyr: <|system|> / <|user|> / <|assistant|> blocks, each ended by EOS"),
    Template("mistral", _MISTRAL, "", "Mistral: [INST] user [/INST] reply, each reply ended by EOS; system messages "
             "open the next user turn", lead=" "),
    Template("vicuna", _VICUNA, "", "Vicuna v1.1 (FastChat): a system line, then USER: ... ASSISTANT: ..., each reply "
             "ended by EOS (FastChat writes </s>, Llama's EOS)", lead=" "),
    Template("gemma", _GEMMA, "<end_of_turn>", "Gemma: user and model turns, each ended by <end_of_turn>; system "
             "messages open the next user turn (no <bos>)"),
]}


def template_row(template: str) -> Template:
    """The row of ``TEMPLATES`` named ``template``; an unknown name is refused with the closest one."""
    if template not in TEMPLATES:
        close = difflib.get_close_matches(str(template), TEMPLATES, n=1, cutoff=0.5)
        raise DataError(f"template: unknown template {template!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def render_text(messages: list[dict], tokenizer, template: str = "chat", add_generation_prompt: bool = True) -> str:
    """``messages`` rendered by ``template``'s Jinja (the tokenizer applies it); with the generation prompt it ends
    where the next reply's ``lead`` starts (cut off the generation prompt where the Jinja writes it there: llama-3's
    second newline), without it after the last message."""
    row = template_row(template)
    text = tokenizer.apply_chat_template(messages, chat_template=row.jinja, add_generation_prompt=add_generation_prompt,
                                         tokenize=False)
    return text.removesuffix(row.lead) if add_generation_prompt and row.lead else text


def end_of_turn(template: str, tokenizer) -> str:
    """The text ``template`` ends every reply with: its row's ``end``, or the tokenizer's EOS token."""
    return template_row(template).end or tokenizer.eos_token or ""


def stops(template: str, tokenizer) -> list[str]:
    """What generation stops at besides EOS under ``template``: its end of turn where that is other text (llama-3's
    ``<|eot_id|>`` and gemma's ``<end_of_turn>`` are plain text to SmolLM2's tokenizer); [] where it is EOS."""
    end = end_of_turn(template, tokenizer)
    return [end] if end and end != tokenizer.eos_token else []


def stops_of(records: list[dict], tokenizer) -> list[str]:
    """The stop texts (``stops``) of the templates whose end of turn ``records``' completions end with (EOS cut off):
    what generation on their prompts stops at besides EOS, so a reply ends where the template rendered it to."""
    eos = tokenizer.eos_token or ""
    tails = {r["completion"].removesuffix(eos) if eos else r["completion"] for r in records if r.get("completion")}
    return sorted({s for t in TEMPLATES for s in stops(t, tokenizer) if any(x.endswith(s) for x in tails)})


def render_prompt(messages: list[dict], tokenizer, template: str = "chat") -> str:
    """The prompt text for ``messages`` (without the reply), ending where the reply starts."""
    return render_text(messages, tokenizer, template)


def completion_text(reply: str, tokenizer, template: str = "chat") -> str:
    """What a rendered record trains the model to write after its prompt: the row's ``lead``, the reply, its end of
    turn (``render``; TRL appends EOS where the end is other text)."""
    return template_row(template).lead + reply + end_of_turn(template, tokenizer)


def render(rec: dict, tokenizer, template: str = "chat") -> dict:
    """Canonical -> {'prompt', 'completion'} exactly as trained on (completion: the reply and its end of turn)."""
    eos = tokenizer.eos_token or ""
    if "text" in rec:
        return {**rec, "prompt": "", "completion": rec["text"] + eos}
    prompt = render_prompt(rec["messages"][:-1], tokenizer, template)
    return {**rec, "prompt": prompt, "completion": completion_text(rec["messages"][-1]["content"], tokenizer, template)}


# ---------------------------------------------------------------- which tokens train (loss_turns)

#: which assistant turns of an instruction record the loss covers (``TrainArgs.loss_turns``): every reply, or only
#: the last (the ``completion``). A record with one reply trains the same tokens either way.
LOSS_TURNS = ("all", "last")


def n_replies(rec: dict) -> int:
    """The assistant turns of a canonical or rendered record (a record without ``messages`` has one: its completion)."""
    return sum(m["role"] == "assistant" for m in rec["messages"]) if "messages" in rec else 1


def template_of(rec: dict, tokenizer) -> str | None:
    """The row of ``TEMPLATES`` that rendered this record's prompt and completion from its messages (None: none did)."""
    eos = tokenizer.eos_token or ""
    for name in TEMPLATES:
        try:
            completion = completion_text(rec["messages"][-1]["content"], tokenizer, name)
            if (rec["completion"] in (completion, completion + eos)
                    and render_prompt(rec["messages"][:-1], tokenizer, name) == rec["prompt"]):
                return name
        except Exception:  # noqa: BLE001 - a chat template that refuses these messages did not render them
            continue
    return None


def reply_spans(messages: list[dict], tokenizer, template: str = "chat") -> list[tuple[int, int]]:
    """Character spans of every assistant reply in the text a rendered record trains on (``render``: the prompt,
    then the last reply's completion, EOS appended where it lacks it), each reply with its end-of-turn as the template
    writes it.

    A reply is what the template adds between the conversation before it with the generation prompt and the
    conversation through it without: the reply and the end of its turn, exactly ``completion_text`` (the row's
    ``lead``, the reply, its end). Whitespace after the end-of-turn is left out (the model stops at the end of turn
    and never generates it; the last reply, trained on as today, has none): with ChatML (SmolLM2) an earlier reply
    is ``reply<|im_end|>`` and the ``\\n`` after it is not trained; with ``alpaca`` it is ``reply`` + EOS, with
    ``llama-3`` ``reply<|eot_id|>``. The last span is the completion and EOS. A template that renders an earlier turn
    differently once the conversation goes on (so the shorter render is not a prefix of the longer), or a row whose
    reply is not where its ``lead`` and ``end`` say, is refused: no exact mask exists for it (use
    ``loss_turns: last``)."""
    eos = tokenizer.eos_token or ""
    row = template_row(template)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = render_prompt(messages[:last], tokenizer, template)
    spans = []
    for i, m in enumerate(messages[:last]):
        if m["role"] != "assistant":
            continue
        before = render_text(messages[:i], tokenizer, template, True)
        through = render_text(messages[:i + 1], tokenizer, template, False)
        if not (through.startswith(before) and prompt.startswith(through)):
            raise DataError(f"template {template!r}: the conversation up to reply {len(spans) + 1} renders "
                            "differently once the conversation goes on, so its tokens cannot be marked exactly; "
                            "use loss_turns: last")
        turn, written = through[len(before):], completion_text(m["content"], tokenizer, template)
        if turn.startswith(written):  # the reply and its end, exactly (every row of the table)
            keep = len(written)
        elif row.jinja is not None:
            raise DataError(f"template {template!r}: reply {len(spans) + 1} is not rendered as {written[:40]!r}...: "
                            "its lead or end in TEMPLATES is wrong, so its tokens cannot be marked exactly")
        else:  # the model's own template ends a turn otherwise: through its end, less the whitespace after it
            keep = len(turn.rstrip())
            if turn.startswith(m["content"]):  # only the whitespace after the end-of-turn, not the reply's own
                keep = max(keep, len(m["content"]))
        spans.append((len(before), len(before) + keep))
    completion = completion_text(messages[last]["content"], tokenizer, template)
    if eos and not completion.endswith(eos):
        completion += eos
    return [*spans, (len(prompt), len(prompt) + len(completion))]


def tokenize_turns(rec: dict, tokenizer, loss_turns: str = "all") -> dict[str, list[int]]:
    """A rendered instruction record as TRL's SFTTrainer takes it pre-tokenized: ``input_ids`` (the prompt and the
    completion, tokenized whole the way TRL tokenizes them: the tokenizer's own special tokens, EOS appended when
    the completion lacks it) and ``completion_mask`` (1 on the tokens the loss covers: TRL folds it into the labels
    under ``completion_only_loss``).

    ``last``: the completion, exactly as TRL marks a prompt/completion pair (the tokens after the longest shared
    prefix of the tokenized prompt and the tokenized whole). ``all``: every reply of ``reply_spans`` marked by the
    same rule at each end (a span covers the tokens from where the text before it, tokenized alone, stops being a
    prefix of the whole to where the text through it does), so the last reply is marked as under ``last`` and a
    record with one reply gives the same tokens and mask either way. The template is the one that rendered the
    prompt (``template_of``); a multi-turn record whose prompt no template renders is refused."""
    from trl.data_utils import common_prefix_length  # TRL's own rule for where a completion starts

    if loss_turns not in LOSS_TURNS:
        raise ValueError(f"loss_turns: {loss_turns!r} is not one of {', '.join(LOSS_TURNS)}")
    eos = tokenizer.eos_token or ""
    prompt, completion = rec["prompt"], rec["completion"]
    if eos and not completion.endswith(eos):
        completion += eos
    text = prompt + completion
    ids = tokenizer(text=text)["input_ids"]
    spans = [(len(prompt), len(text))]
    if loss_turns == "all" and n_replies(rec) > 1:
        template = template_of(rec, tokenizer)
        if template is None:
            raise DataError("loss_turns all: a record's prompt is not what any template "
                            f"({', '.join(TEMPLATES)}) renders from its messages, so its earlier replies cannot be "
                            f"found (prompt starts {prompt[:80]!r}); render it with data.render, or use "
                            "loss_turns: last")
        spans = [*reply_spans(rec["messages"], tokenizer, template)[:-1], spans[0]]  # the last: the completion
    mask = [0] * len(ids)
    for start, end in spans:
        a = common_prefix_length(tokenizer(text=text[:start])["input_ids"], ids)
        b = len(ids) if end >= len(text) else _tokens_through(tokenizer, text, ids, end)
        mask[a:b] = [1] * (b - a)
    return {"input_ids": ids, "completion_mask": mask}


def _tokens_through(tokenizer, text: str, ids: list[int], end: int) -> int:
    """How many tokens of ``ids`` (``text`` tokenized whole) it takes to write ``text[:end]``: the tokens the text
    before ``end`` shares with the whole, and where a token holds the last characters before ``end`` and runs past it
    (a BPE merge across an end of turn and the next turn: llama-3's ``<|eot_id|><|start_header_id|>`` is ``... '|',
    '><', '|' ...`` to SmolLM2's tokenizer), that token too: the model writes it to end its turn, and generation stops
    inside it (``stops``; the text after the stop is cut off)."""
    head = tokenizer(text=text[:end])["input_ids"]
    from trl.data_utils import common_prefix_length

    b = common_prefix_length(head, ids)
    if b == len(head):
        return b
    if getattr(tokenizer, "is_fast", False):  # every token that starts before ``end``
        offsets = tokenizer(text=text, return_offsets_mapping=True)["offset_mapping"]
        return max(b, sum(1 for s, _ in offsets if s < end))
    return b + 1


# ---------------------------------------------------------------- cleaning and splitting

def _key(rec: dict) -> str:
    parts = [rec["text"]] if "text" in rec else [f"{m['role']}: {m['content']}" for m in rec["messages"]]
    return "\n".join(re.sub(r"\s+", " ", t).strip().lower() for t in parts)


def dedup(records: list[dict]) -> tuple[list[dict], int]:
    """Drop exact duplicates (case- and whitespace-insensitive); keep the first."""
    seen, out = set(), []
    for r in records:
        k = _key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(records) - len(out)


def reply_of(rec: dict) -> str:
    """The text a record trains the model to produce: its raw text, or the last (assistant) message."""
    return rec.get("text") or rec["messages"][-1]["content"]


def off_format(rec: dict) -> bool:
    """The record names a task check and its own reply fails it (the demo's planted off-format replies)."""
    return rec.get("check") in tasks.CHECKS and not tasks.passes(reply_of(rec).strip(), rec)


FILTERS = {
    "empty": "no reply or no prompt",
    "too_short": "reply has fewer than min_tokens tokens",
    "too_long": "prompt + reply have more than max_tokens tokens",
    "off_format": "reply fails the record's own task check (only records that name a check)",
}


_LONGEST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def chars_per_token(tokenizer) -> int | None:
    """The most characters of text one token of ``tokenizer`` can stand for (computed once per tokenizer): its
    longest vocabulary entry (a byte-level BPE entry is one character a byte, so it bounds the characters too), times
    4 when a normalizer may shrink the text before it is split (NFKC composes up to 3 characters into one). A text
    of more than ``max_tokens`` times this is more than ``max_tokens`` tokens, and is not tokenized to learn it.
    None: the tokenizer has no vocabulary to ask (no bound)."""
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        longest = max(map(len, tokenizer.get_vocab()), default=0) or None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if longest and getattr(backend, "normalizer", None) is not None:
            longest *= 4
    except Exception:  # noqa: BLE001 - any tokenizer without a readable vocabulary just gets no bound
        longest = None
    try:
        _LONGEST[tokenizer] = longest
    except TypeError:
        pass
    return longest


def quality_filter(rendered: list[dict], tokenizer, min_tokens: int, max_tokens: int,
                   check_format: bool = True) -> tuple[list[dict], dict[str, int]]:
    """Drop empty, too-short (reply tokens), too-long (prompt+reply tokens) and off-format examples.

    Returns kept records (with ``n_tokens``) and {filter: number removed}, each record
    counted under the first filter that removes it (see ``FILTERS``). A text longer in characters than the most
    its tokens could cover (``chars_per_token``) is not tokenized to be counted: a reply that long is not too short,
    a prompt + reply that long is too long (the counts are the ones tokenizing would give).
    """
    removed = {k: 0 for k in FILTERS}
    kept = []
    per_token = chars_per_token(tokenizer)
    for r in rendered:
        reply = reply_of(r).strip()
        if not reply or ("messages" in r and not any(m["content"].strip() for m in r["messages"][:-1])):
            removed["empty"] += 1
            continue
        if ((per_token is None or len(reply) < min_tokens * per_token)
                and len(tokenizer(reply, add_special_tokens=False)["input_ids"]) < min_tokens):
            removed["too_short"] += 1
            continue
        text = r["prompt"] + r["completion"]
        if per_token is not None and len(text) > max_tokens * per_token:
            removed["too_long"] += 1
            continue
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > max_tokens:
            removed["too_long"] += 1
            continue
        if check_format and off_format(r):
            removed["off_format"] += 1
            continue
        kept.append({**r, "n_tokens": n})
    if rendered and not kept:
        raise DataError(f"the quality filters removed all {len(rendered)} examples ({removed}); "
                        f"check min_tokens={min_tokens} and max_tokens={max_tokens}")
    return kept, removed


def split(records: list[dict], validation_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Shuffle (``seed``) and cut into train / validation / test; an empty train or test split (too few
    examples for the fractions) is an error (an empty validation split only costs the eval loss)."""
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise DataError("validation_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test = round(len(idx) * test_fraction)
    n_val = round(len(idx) * validation_fraction)
    parts = {"test": idx[:n_test], "validation": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}
    empty = [name for name in ("train", "test") if not parts[name]]
    if empty:
        raise DataError(f"{len(records)} examples after cleaning give an empty {' and '.join(empty)} split "
                        f"(validation_fraction={validation_fraction}, test_fraction={test_fraction}); "
                        "use more data or larger fractions")
    return {name: [records[i] for i in sorted(parts[name])] for name in SPLITS}


def token_stats(records: list[dict]) -> dict[str, float]:
    lens = sorted(r["n_tokens"] for r in records)
    if not lens:
        return {"n": 0}
    q = lambda f: lens[min(len(lens) - 1, int(f * len(lens)))]
    return {"n": len(lens), "min": lens[0], "median": q(0.5), "p95": q(0.95), "max": lens[-1],
            "mean": round(sum(lens) / len(lens), 1)}


# ---------------------------------------------------------------- the whole chain

@dataclass
class Prepared:
    splits: dict[str, list[dict]]
    n_raw: int
    n_removed_duplicates: int
    removed_by_filter: dict[str, int] = field(default_factory=dict)

    @property
    def n_removed_filtered(self) -> int:
        return sum(self.removed_by_filter.values())

    def counts(self) -> dict[str, int]:
        return {f"n_{s}": len(self.splits[s]) for s in SPLITS}


def prepare(p, tokenizer) -> Prepared:
    """Every step of 01_data_prep in order, for notebooks that run without it.

    ``p`` is a :class:`nbft.params.DataPrepParams`.
    """
    raw, records = load_records(p)
    n_dup = 0
    if p.dedup:
        records, n_dup = dedup(records)
    rendered = [render(r, tokenizer, p.template) for r in records]
    kept, removed = quality_filter(rendered, tokenizer, p.min_tokens, p.max_tokens, p.check_format)
    return Prepared(split(kept, p.validation_fraction, p.test_fraction, p.seed), len(raw), n_dup, removed)


def metrics(n_raw: int, n_removed_duplicates: int, removed_by_filter: dict[str, int],
            splits: dict[str, list[dict]], stats: dict[str, dict], sources: dict[str, dict] | None = None) -> dict:
    """01_data_prep's section of metrics.json (with ``findings`` added by the notebook): each split's size
    (``n_train``, ``n_validation``, ``n_test``), what cleaning removed, the training split's median length in tokens
    and its examples per task; for a mix, each source's counts and shares before and after cleaning
    (``source_shares``)."""
    return {**({"sources": sources} if sources else {}), **{f"n_{name}": len(recs) for name, recs in splits.items()}, "n_raw": n_raw,
            "n_removed_duplicates": n_removed_duplicates, "n_removed_filtered": sum(removed_by_filter.values()),
            "removed_by_filter": removed_by_filter, "median_tokens": stats.get("train", {}).get("median"),
            "n_by_task": dict(Counter(r.get("task", "(none)") for r in splits.get("train", [])))}


def findings(n_raw: int, n_removed_duplicates: int, removed_by_filter: dict[str, int], splits: dict[str, list[dict]],
             stats: dict[str, dict], sources: dict[str, dict] | None = None) -> list[str]:
    """01_data_prep's findings: what cleaning removed and what is left, in numbers."""
    kept = sum(len(v) for v in splits.values())
    removed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in removed_by_filter.items() if v) or "nothing"
    out = [f"{n_raw} raw records -> {kept} examples: {n_removed_duplicates} duplicates removed, "
           f"{sum(removed_by_filter.values())} by the quality filters ({removed})."]
    out.append("Splits: " + ", ".join(f"{s} {len(v)}" for s, v in splits.items())
               + (f"; the median training example has {stats['train']['median']} tokens "
                  f"(95th percentile {stats['train']['p95']}, longest {stats['train']['max']})."
                  if stats.get("train", {}).get("n") else "."))
    by_task: dict[str, int] = {}
    for r in splits.get("train", []):
        by_task[r.get("task", "(none)")] = by_task.get(r.get("task", "(none)"), 0) + 1
    if len(by_task) > 1:
        out.append("Training mix: " + ", ".join(f"{t} {n}" for t, n in by_task.items()) + ".")
    if sources:
        out.append("Sources, share of the mix before -> after cleaning: " + ", ".join(
            f"{name} {v['share_raw']:.0%} -> {v.get('share_clean', v['share_raw']):.0%}" for name, v in sources.items())
                   + ".")
    return out


def check_inputs(p: params.DataPrepParams) -> None:
    """Before any notebook runs: a data file is read and every record normalized (errors name file, line, field);
    a hub dataset name is looked up in the local cache while the hub is offline (``check_hub``). A mix: each of
    its sources so, with its own format; an error names the source's index."""
    if isinstance(p.dataset, list):
        for i, src in enumerate(sources(p.dataset, p.data_format)):
            try:
                check_inputs(dataclasses.replace(p, dataset=src.path, data_format=src.format))
            except DataError as e:
                raise DataError(f"dataset[{i}]: {e}") from None
        return
    if is_file_spec(p.dataset):
        raw = load_raw(p.dataset, p.seed, p.n_examples, p.hf_split)
        if not raw:
            raise DataError(f"{p.dataset}: no records")
        normalize(raw, p.data_format)
    elif p.dataset != "demo":
        check_hub(p.dataset, p.hf_split)


def check_prepared(p: params.DataPrepParams, tokenizer) -> None:
    """Before any notebook runs, with the model's tokenizer: the whole chain of 01_data_prep on the built-in
    demo or a local file (``prepare``), so filters that remove everything and empty splits fail here.
    A Hugging Face dataset name is left to the notebook (reading it may need the network)."""
    if all(d == "demo" or is_file_spec(d) for d in ([s.path for s in sources(p.dataset)] or [p.dataset])):
        prepare(p, tokenizer)


def for_stage(run, p, tokenizer) -> tuple[dict[str, list[dict]], str]:
    """The prepared splits a downstream notebook trains on, and where they came from.

    In a pipeline run, 01_data_prep's saved splits; on its own, the same chain run
    here with 01_data_prep's defaults (and this notebook's common parameters).
    """
    up = run.upstream("01_data_prep")
    if up is not None and (up / "train.jsonl").is_file():
        return load_splits(up), f"01_data_prep artifacts in this run ({files.relative(up, run.path)})"
    prepared = prepare(data_params_for(run, p), tokenizer)
    return prepared.splits, "built here with 01_data_prep's default parameters (no 01_data_prep in this run)"


def data_params_for(run, p) -> params.DataPrepParams:
    """The 01_data_prep parameters behind this run's data: the ones 01_data_prep recorded in its data card
    when it ran in this run folder, else its defaults with this stage's common parameters (``p``)."""
    up = run.upstream("01_data_prep")
    card_file = up / "data_card.json" if up is not None else None
    if card_file is not None and card_file.is_file():
        card = json.loads(card_file.read_text(encoding="utf-8"))
        if isinstance(card.get("parameters"), dict):
            return params.build("01_data_prep", card["parameters"], where=f"{card_file}: ")
    return params.DataPrepParams(**{k: getattr(p, k) for k in params.common_names()})


def data_card(p: params.DataPrepParams, splits: dict[str, list[dict]], n_removed_duplicates: int,
              removed_by_filter: dict[str, int], sources: dict[str, dict] | None = None) -> dict:
    """01_data_prep's card: what was made and every parameter it was made with (later stages read them); for a mix,
    each source's counts and shares before and after cleaning (``source_shares``)."""
    paths = [s["path"] for s in p.dataset] if isinstance(p.dataset, list) else [p.dataset]
    read_as = {d: r for d in paths if (r := _SNIFFED.get(str(Path(os.path.expanduser(d)))))}  # no suffix: read as
    if not isinstance(p.dataset, list):
        read_as = read_as.get(p.dataset)
    return {"dataset": p.dataset, **({"read_as": read_as} if read_as else {}),
            **({"sources": sources} if sources else {}), "demo_tasks": p.demo_tasks,
            "template": p.template, "model": p.model, "seed": p.seed, **{f"n_{s}": len(recs) for s, recs in splits.items()},
            "n_removed_duplicates": n_removed_duplicates, "removed_by_filter": removed_by_filter,
            "parameters": dataclasses.asdict(p)}


def normalized_prompt(rec: dict) -> str:
    """A rendered prompt compared case- and whitespace-insensitively (how held-out prompts are kept out)."""
    return re.sub(r"\s+", " ", rec["prompt"]).strip().lower()


def save_splits(splits: dict[str, list[dict]], folder: str | Path, card: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        files.write_atomic(folder / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    if card is not None:
        files.write_json(folder / "data_card.json", card, ensure_ascii=False)
    return folder


def load_splits(folder: str | Path) -> dict[str, list[dict]]:
    folder = Path(folder)
    return {name: [rec for _, rec in read_jsonl(folder / f"{name}.jsonl")] for name in SPLITS}
