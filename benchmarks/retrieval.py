"""Retrieval benchmark: build time, size, recall against exact search and single-query latency
of the faiss index kinds in nbft.rag, over a large chunk collection.

    .venv/bin/python benchmarks/retrieval.py [--n-chunks 100000] [--queries 200] [--n-real 4000]

Embedding 100k texts with all-MiniLM-L6-v2 takes ~12 min on 2 CPU cores, so only ``--n-real``
chunks are real texts (fictional-world documents from nbft.corpora, several worlds), embedded
for real; the rest are synthetic 384-d unit vectors (``--fill jitter``: a real chunk's vector
plus Gaussian noise, cosine ~0.75 to it, so the collection stays clustered like real text and
the synthetic vectors crowd the real neighbours; ``--fill random``: uniform on the sphere,
an easier case for the approximate indexes). Queries are questions about the real entities,
embedded for real in every timed call. Prints a markdown table; docs/measurements.md records
the figures measured on the project's 2-core machines. Not a test: numbers depend on the machine
and on what else runs on it (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import random
import time

import faiss
import numpy as np

from nbft import corpora, knowledge, rag

#: the questions asked about each world (nbft.knowledge.FACT_TYPES); the figures in
#: docs/measurements.md were measured with these.
QUESTION_TYPES = ("town.river", "organisation.members", "person.born", "person.invention")


def world_texts(n: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """``n`` fictional-world documents (ids "w<seed>/<title>") and questions (text, gold doc id)."""
    docs, questions, seed = [], [], 0
    while len(docs) < n:
        w = corpora.invented_world(n_towns=12, n_people=200, n_orgs=20, seed=seed)
        wid = lambda name: f"w{seed}/{name}"  # noqa: E731
        docs += [{"id": wid(d["title"]), **{k: v for k, v in d.items() if k != "id"}} for d in corpora.world_documents(w)]
        questions += [(q, wid(doc_id)) for q, doc_id, _ in knowledge.world_questions(w, QUESTION_TYPES)]
        seed += 1
    ids = {d["id"] for d in docs[:n]}
    return docs[:n], [q for q in questions if q[1] in ids]


def synthetic(real: np.ndarray, n: int, fill: str, rng: np.random.Generator) -> np.ndarray:
    if fill == "random":
        v = rng.standard_normal((n, real.shape[1]), dtype=np.float32)
    else:  # jitter: noise of norm ~0.88 on a unit vector -> cosine ~0.75 to the vector it came from
        v = real[rng.integers(0, len(real), n)] + rng.standard_normal((n, real.shape[1]), dtype=np.float32) * 0.045
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200, help="timed single queries per index setting")
    ap.add_argument("--n-real", type=int, default=4000, help="chunks embedded from real text; the rest synthetic")
    ap.add_argument("--fill", choices=["jitter", "random"], default="jitter")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=list(rag.INDEX_KINDS))
    ap.add_argument("--nprobe", type=int, nargs="+", help="ivf lists searched (default: 16 32 128 and rag.default_nprobe)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=rag.DEFAULT_EF_CONSTRUCTION)
    ap.add_argument("--threads", type=int, default=1, help="faiss + torch threads while timing single queries")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count(),
                    help="faiss + torch threads while embedding the corpus and building indexes")
    ap.add_argument("--embed-dtypes", nargs="+", default=["float32", "bfloat16"],
                    help="query embedder dtypes; the first is the index's, the others are timed on the best setting")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n_real = min(args.n_real, args.n_chunks)

    docs, questions = world_texts(n_real)
    chunks = rag.chunk(docs)[:n_real]  # ~32-word documents: one chunk each
    model = rag.embedder(dtype=args.embed_dtypes[0])
    t0 = time.perf_counter()
    with rag.cpu_threads(args.build_threads):
        real = rag.embed([c.embed_text for c in chunks], model)
    embed_s = time.perf_counter() - t0
    n_syn = args.n_chunks - len(chunks)
    vectors = np.concatenate([real, synthetic(real, n_syn, args.fill, rng)]) if n_syn else real
    chunks += [rag.Chunk(f"synthetic/{i}", 0, "") for i in range(n_syn)]
    order = rng.permutation(len(chunks))  # real and synthetic interleaved (HNSW insertion order matters)
    vectors, chunks = np.ascontiguousarray(vectors[order]), [chunks[i] for i in order]
    qs = random.Random(args.seed).sample(questions, min(args.queries, len(questions)))
    q_text, q_gold = [q for q, _ in qs], [g for _, g in qs]
    q_vec = rag.embed(q_text, model)

    print(f"{len(chunks):,} chunks x {vectors.shape[1]} dims: {len(real):,} real fictional-world texts embedded "
          f"({embed_s:.0f} s, {len(real) / embed_s:.0f} texts/s), {n_syn:,} synthetic ({args.fill}: "
          f"{'real vector + noise, cosine ~0.75' if args.fill == 'jitter' else 'random unit vectors'}); "
          f"{len(qs)} questions about the real entities, k={args.k}")
    print(f"cpu cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start; build: {args.build_threads} "
          f"thread(s); timed single queries: {args.threads} faiss + torch thread(s); query embedder "
          f"{args.embed_dtypes[0]}\n", flush=True)

    settings = []  # (kind, params label, build options, tune options)
    for kind in args.kinds:
        if kind == "ivf":
            nlist = rag.default_nlist(len(vectors))
            default = rag.default_nprobe(nlist)
            for p in args.nprobe or sorted({16, 32, default, 128}):
                settings.append((kind, f"nlist {nlist}, nprobe {p}{' (default)' * (p == default)}", {}, {"nprobe": p}))
        elif kind == "hnsw":
            opts = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
            for e in args.ef_search:
                label = f"M {args.hnsw_m}, efC {args.ef_construction}, efSearch {e}{' (default)' * (e == rag.DEFAULT_EF_SEARCH)}"
                settings.append((kind, label, opts, {"ef_search": e}))
        else:
            settings.append((kind, "exact", {}, {}))

    exact = rag.build_index(vectors, "flat").search(q_vec, args.k)[1]  # ground truth: exact search
    rows, built = [], {}
    for kind, label, build_opts, tune_opts in settings:
        if kind not in built:
            t0 = time.perf_counter()
            with rag.cpu_threads(args.build_threads):
                index = rag.build_index(vectors, kind, **build_opts)
            built[kind] = (index, time.perf_counter() - t0, len(faiss.serialize_index(index)) / 2**20)
        index, build_s, size_mb = built[kind]
        rag.tune(index, **tune_opts)
        r = rag.Retriever(chunks, index, model)
        found = index.search(q_vec, args.k)[1]
        lat = rag.latency_ms(r, q_text, args.k, threads=args.threads)
        rows.append({"index": kind, "params": label, "embed": args.embed_dtypes[0], "build_s": build_s, "size_mb": size_mb,
                     "recall": rag.neighbour_recall(found, exact, args.k),
                     "answer": rag.recall_at_k(r.lookup(q_vec, args.k), q_gold, args.k), **lat.summary(),
                     "tune": tune_opts})
        print(f"  {kind} {label}: {lat.summary()}", flush=True)

    approx = [row for row in rows if row["index"] != "flat"] or rows
    good = [row for row in approx if row["recall"] >= 0.95] or approx
    best = min(good, key=lambda row: row["search_p50_ms"])  # the fastest search at recall >= 0.95
    for dtype in args.embed_dtypes[1:]:
        m = rag.embedder(dtype=dtype)
        index = rag.tune(built[best["index"]][0], **best["tune"])
        r = rag.Retriever(chunks, index, m)
        qv = rag.embed(q_text, m)
        lat = rag.latency_ms(r, q_text, args.k, threads=args.threads)
        rows.append({**best, "embed": dtype, "recall": rag.neighbour_recall(index.search(qv, args.k)[1], exact, args.k),
                     "answer": rag.recall_at_k(r.lookup(qv, args.k), q_gold, args.k), **lat.summary()})

    print(f"\n| index | parameters | query embedder | build s | size MB | recall@{args.k} vs flat | answer in top {args.k} "
          f"| embed p50 / p95 ms | search p50 / p95 ms | total p50 / p95 ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['index']} | {row['params']} | {row['embed']} | {row['build_s']:.1f} | {row['size_mb']:.0f} "
              f"| {row['recall']:.3f} | {row['answer']:.3f} | "
              + " | ".join(f"{row[f'{p}_p50_ms']:.2f} / {row[f'{p}_p95_ms']:.2f}" for p in ("embed", "search", "total"))
              + " |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end. recall@{args.k} vs flat: share of the exact top-{args.k} "
          f"found; answer in top {args.k}: the question's source document retrieved (synthetic vectors crowd it).")


if __name__ == "__main__":
    main()
