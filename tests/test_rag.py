"""nbft.rag: chunking, embeddings, the faiss index kinds, retrieval quality, persistence, prompts."""
import random

import numpy as np
import pytest

from nbft import corpora, models, rag
from nbft.knowledge import world_questions


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One faiss/torch thread: with two cores shared with other jobs, two OpenMP threads wait on
    each other (a 20-text embedding took 6 s instead of 0.5 s); restored after the module."""
    with rag.cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def world():
    """A small fictional world cut into several chunks per document, indexed flat (built once)."""
    w = corpora.invented_world(seed=0)
    docs = [{"id": d["title"], **d} for d in corpora.world_documents(w)]
    chunks = rag.chunk(docs, chunk_words=16, overlap_words=4)
    vectors = rag.embed([c.embed_text for c in chunks])
    retriever = rag.build_retriever(chunks, "flat", model=rag.embedder(), vectors=vectors)
    return {"world": w, "docs": docs, "chunks": chunks, "vectors": vectors, "retriever": retriever,
            "questions": world_questions(w)}


def unit_vectors(n, d=64, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---------------------------------------------------------------- chunking

def long_documents():
    """Long documents: fictional-world prose, plus one 90-word run-on sentence (forces mid-sentence cuts)."""
    texts = [d["text"] for d in corpora.world_documents(corpora.invented_world(seed=3))]
    docs = [{"id": f"d{i}", "title": f"Part {i}", "text": "\n".join(texts[i::4])} for i in range(4)]
    docs.append({"id": "runon", "text": " ".join(f"w{i}" for i in range(90)) + "."})
    return docs


@pytest.mark.parametrize("chunk_words,overlap_words", [(16, 4), (40, 10), (25, 0), (7, 6), (1, 0)])
def test_chunks_cover_every_word_in_order_and_respect_sizes(chunk_words, overlap_words):
    docs = long_documents()
    chunks = rag.chunk(docs, chunk_words, overlap_words)
    for doc in docs:
        words = doc["text"].split()
        mine = [c for c in chunks if c.doc_id == doc["id"]]
        assert [c.index for c in mine] == list(range(len(mine)))
        covered = set()
        for prev, c in zip([None] + mine, mine):
            assert 1 <= c.n_words <= chunk_words
            assert c.text.split() == words[c.start:c.start + c.n_words]  # the chunk is its words, in place
            assert c.title == doc.get("title", "")
            covered.update(range(c.start, c.start + c.n_words))
            if prev is not None:
                overlap = prev.start + prev.n_words - c.start
                assert c.start > prev.start and 0 <= overlap <= overlap_words
        assert covered == set(range(len(words)))


def test_chunks_end_at_sentence_ends_when_they_can():
    doc = " ".join(f"Sentence {i} has exactly six words." for i in range(30))  # 180 words, 6 per sentence
    chunks = rag.chunk([doc], chunk_words=20, overlap_words=6)
    assert all(c.text.endswith("words.") for c in chunks)  # cut after a sentence, never inside one
    assert all(c.text.startswith("Sentence") for c in chunks)  # the overlap is a whole sentence
    assert [c.n_words for c in chunks[:-1]] == [18] * (len(chunks) - 1)
    assert chunks[1].start == 12  # 18 words, then back one 6-word sentence


def test_chunk_ids_titles_and_errors():
    chunks = rag.chunk(["one two three.", "", {"id": "x", "title": "T", "text": "four five"}], chunk_words=2)
    assert [(c.doc_id, c.index, c.text) for c in chunks] == [("0", 0, "one two"), ("0", 1, "three."), ("x", 0, "four five")]
    assert chunks[0].id == "0#0" and chunks[2].id == "x#0"
    assert chunks[2].embed_text == "T: four five" and chunks[0].embed_text == "one two"
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        rag.chunk([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(ValueError, match="overlap_words"):
        rag.chunk(["a b c"], chunk_words=4, overlap_words=4)


# ---------------------------------------------------------------- embeddings

def test_embeddings_are_normalized_deterministic_and_match_sentence_transformers(world):
    model = rag.embedder()
    assert rag.embedder() is model  # cached per process
    texts = [c.embed_text for c in world["chunks"][:20]]
    a = rag.embed(texts, model)
    assert a.shape == (20, rag.DIM) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, rag.embed(texts, model))
    np.testing.assert_allclose(a, rag.embed(texts, model, batch_size=3), atol=1e-5)  # batching does not matter
    np.testing.assert_allclose(rag.embed(texts[4], model), a[4:5], atol=1e-5)  # one string -> one row
    np.testing.assert_allclose(a, model.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert rag.embed([], model).shape == (0, rag.DIM)
    bf16 = rag.embed(texts, rag.embedder(dtype="bfloat16"))  # the faster query embedder agrees
    assert bf16.dtype == np.float32 and ((bf16 * a).sum(1) > 0.999).all()
    with pytest.raises(ValueError, match="int4"):
        rag.embedder(dtype="int4")
    assert [rag.embed_dtype(x) for x in ("fp32", "bf16", "fp16")] == ["float32", "bfloat16", "float16"]
    assert rag.embed_dtype("auto") == ("bfloat16" if models.cpu_supports_bf16() else "float32")
    with pytest.raises(models.ModelError, match="precision"):
        rag.embed_dtype("int8")
    # meaning, not noise: a text is nearer to its own paraphrase than to another entity's text
    p = rag.embed(["The town of Zufenlo lies on the Belwen river.", world["docs"][0]["text"], world["docs"][-1]["text"]])
    assert world["docs"][0]["title"] == "Zufenlo" and p[0] @ p[1] > p[0] @ p[2] + 0.2


# ---------------------------------------------------------------- indexes

@pytest.mark.parametrize("kind", list(rag.INDEX_KINDS))
def test_each_index_kind_finds_the_exact_nearest_neighbour(kind):
    v = unit_vectors(3000)
    index = rag.build_index(v, kind)
    assert index.ntotal == 3000 and rag.index_kind(index) == kind
    probe = np.arange(0, 3000, 37)
    scores, ids = index.search(v[probe], 3)
    np.testing.assert_array_equal(ids[:, 0], probe)  # a stored vector is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # inner product of unit vectors = cosine
    assert (scores[:, 1] < scores[:, 0]).all()
    # perturbed queries: the approximate kinds agree with exact search on the top hit
    q = v[probe] + 0.02 * np.random.default_rng(1).standard_normal((len(probe), 64)).astype(np.float32)
    exact = (q @ v.T).argmax(1)
    assert (index.search(q, 1)[1][:, 0] == exact).mean() >= 0.95


def test_index_defaults_and_tuning():
    assert rag.default_nlist(100_000) == 1265 and rag.default_nlist(1000) == 25 and rag.default_nlist(30) == 1
    assert rag.default_nprobe(1265) == 71 and rag.default_nprobe(25) == 10 and rag.default_nprobe(4) == 4
    assert rag.build_index(unit_vectors(1000), "ivf").nprobe == 10
    ivf = rag.build_index(unit_vectors(2000), "ivf", nlist=20, nprobe=4)
    assert (ivf.nlist, ivf.nprobe) == (20, 4)
    assert rag.tune(ivf, nprobe=100).nprobe == 20  # capped at nlist
    hnsw = rag.build_index(unit_vectors(500), "hnsw", hnsw_m=8, ef_search=20)
    assert rag.tune(hnsw, ef_search=99).hnsw.efSearch == 99


def test_unknown_index_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"index kind 'annoy' is not known; choose one of: flat, ivf, hnsw"):
        rag.build_index(unit_vectors(10), "annoy")
    with pytest.raises(ValueError, match="2-d"):
        rag.build_index(np.zeros(5), "flat")


def test_cpu_threads_restores_both_settings():
    import faiss
    import torch

    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    with rag.cpu_threads(2):
        assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == (2, 2)
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == before


def test_retriever_needs_one_vector_per_chunk(world):
    with pytest.raises(ValueError, match="vectors"):
        rag.build_retriever(world["chunks"][:3], vectors=world["vectors"][:2])


# ---------------------------------------------------------------- retrieval quality

def test_flat_recall_on_the_fictional_world(world):
    """Measured: doc recall@1 1.0; answer-chunk recall@1 0.85, @3 0.99 (seed 0, 104 questions, 168 chunks)."""
    questions, chunks = world["questions"], world["chunks"]
    results = world["retriever"].search([q for q, _, _ in questions], k=5)
    assert all(len(r) == 5 and r[0][1] >= r[-1][1] for r in results)  # best first
    gold_docs = [g for _, g, _ in questions]
    gold_chunks = [{c.id for c in chunks if c.doc_id == g and a in c.text} for _, g, a in questions]
    assert all(gold_chunks)
    assert rag.recall_at_k(results, gold_docs, 1) >= 0.95
    assert rag.recall_at_k(results, gold_chunks, 3) >= 0.9
    assert rag.recall_at_k(results, gold_chunks, 1) <= rag.recall_at_k(results, gold_chunks, 3)
    shuffled = random.Random(0).sample(gold_docs, len(gold_docs))  # the metric can tell wrong answers
    assert rag.recall_at_k(results, shuffled, 5) <= 0.2


def test_recall_and_neighbour_recall_on_hand_made_cases():
    a, b, c = rag.Chunk("a", 0, "x"), rag.Chunk("b", 0, "y"), rag.Chunk("b", 1, "z")
    retrieved = [[(a, 0.9), (b, 0.5)], [(c, 0.8), (a, 0.1)], []]
    assert rag.recall_at_k(retrieved, ["b", "b#1", "a"], 1) == pytest.approx(1 / 3)
    assert rag.recall_at_k(retrieved, ["b", "b#1", "a"], 2) == pytest.approx(2 / 3)
    assert rag.recall_at_k(retrieved, [["x", "a#0"], {"b#0"}, "a"], 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        rag.recall_at_k(retrieved, ["a"], 1)
    assert rag.neighbour_recall([[1, 2, 3], [4, 5, -1]], [[3, 2, 9], [6, 7, 8]], 3) == pytest.approx(1 / 3)


def test_latency_reports_embedding_and_search_per_query(world):
    queries = [q for q, _, _ in world["questions"][:6]]
    lat = rag.latency_ms(world["retriever"], queries, k=3, warmup=1)
    assert lat.embed_ms.shape == lat.search_ms.shape == (6,)
    assert (lat.embed_ms > 0).all() and (lat.search_ms > 0).all()
    np.testing.assert_allclose(lat.total_ms, lat.embed_ms + lat.search_ms)
    s = lat.summary()
    assert set(s) == {f"{p}_{q}_ms" for p in ("embed", "search", "total") for q in ("p50", "p95")}
    assert s["total_p50_ms"] <= s["total_p95_ms"] and rag.p50([1, 2, 3, 4]) == 2.5


# ---------------------------------------------------------------- persistence

@pytest.mark.parametrize("kind", list(rag.INDEX_KINDS))
def test_save_and_load_give_identical_search_results(world, tmp_path, kind):
    r = rag.build_retriever(world["chunks"], kind, model=rag.embedder(), vectors=world["vectors"],
                            nprobe=2, ef_search=24)
    queries = [q for q, _, _ in world["questions"][::7]]
    before = r.search(queries, k=4)
    rag.save_index(r, tmp_path / "idx")
    loaded = rag.load_index(tmp_path / "idx", model=r.model)
    assert loaded.kind == kind and loaded.info["kind"] == kind and loaded.chunks == r.chunks
    if kind == "ivf":
        assert loaded.index.nprobe == 2
    if kind == "hnsw":
        assert loaded.index.hnsw.efSearch == 24
    after = loaded.search(queries, k=4)
    assert [[(c.id, s) for c, s in hits] for hits in after] == [[(c.id, s) for c, s in hits] for hits in before]
    with pytest.raises(FileNotFoundError):
        rag.load_index(tmp_path / "missing")


# ---------------------------------------------------------------- prompts

def test_rag_prompt_is_plain_passages_then_question(world):
    q = world["questions"][0][0]
    hits = world["retriever"].search(q, k=3)[0]
    prompt = rag.rag_prompt(q, hits)
    assert prompt.startswith(rag.RAG_INSTRUCTION) and prompt.endswith(f"Question: {q}")
    positions = [prompt.index(c.text) for c, _ in hits]
    assert positions == sorted(positions)  # best passage first
    short = rag.rag_prompt(q, hits, max_words=hits[0][0].n_words + 1)
    assert hits[0][0].text in short and hits[1][0].text not in short
    assert rag.rag_prompt("Q?", ["p1", rag.Chunk("d", 0, "p2")], instruction="") == "p1\n\np2\n\nQuestion: Q?"
    assert rag.rag_prompt("Q?", []) == f"{rag.RAG_INSTRUCTION}\n\nQuestion: Q?"


def test_compare_indexes_on_the_fictional_world(world):
    from nbft import knowledge

    facts = knowledge.world_facts(world["world"], seed=0)[:30]
    gold = knowledge.gold_chunks(world["chunks"], facts)
    assert all(g for g in gold)
    rows, retrievers = rag.compare_indexes(world["chunks"], world["vectors"], [f.question for f in facts], gold,
                                           ["flat", "hnsw", "flat"], [1, 3], latency_k=3, n_latency=5)
    assert [r["index"] for r in rows] == ["flat", "hnsw"] and set(retrievers) == {"flat", "hnsw"}
    for r in rows:
        assert 0 <= r["recall@1"] <= r["recall@3"] <= 1 and r["p50 ms"] > 0 and r["search p50 ms"] >= 0
    assert rows[0]["recall@3"] >= 0.8  # exact search over the real MiniLM embeddings
    bf16 = rag.embedder(dtype="bfloat16")  # queries may come from another embedder than the documents
    rows16, r16 = rag.compare_indexes(world["chunks"], world["vectors"], [f.question for f in facts], gold,
                                      ["flat"], [1, 3], latency_k=3, n_latency=5, model=bf16)
    assert r16["flat"].embedder() is bf16 and abs(rows16[0]["recall@3"] - rows[0]["recall@3"]) <= 0.05
