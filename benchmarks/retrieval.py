"""Retrieval benchmarks, each a ratio against a baseline measured in the same run (medians of repeats).

1. Encoding: ``md2pr_st.index.encode`` vs plain ``SentenceTransformer.encode`` on the same texts
   (ratio = plain time / our time; >= 0.95 means we are not slower).
2. Exact search: FAISS ``IndexFlatIP`` vs ``torch.topk(q @ D.T)`` (ratio = torch time / FAISS time).
3. HNSW at our default settings (HNSW32, efConstruction=100, efSearch=128) vs exact search: recall@10 and
   speed-up, on 200k random 384-d vectors drawn from a 1,000-component Gaussian mixture (clustered, like real
   embeddings) and on the real RAG24 passage embeddings of all-MiniLM-L6-v2. ``--isotropic`` adds i.i.d.
   Gaussian vectors, the worst case for any approximate index (no neighbourhood structure: exact search is the
   right choice there, and the benchmark shows why).

``--output`` writes every measurement as JSON (with the thread counts and the load average of the run).

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/retrieval.py                 # full: 200k vectors
    HF_HUB_OFFLINE=1 python benchmarks/retrieval.py --n 20000 --repeats 3 --encode-texts 64   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import faiss
import numpy as np
import torch

from md2pr_st.utils import write_json


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(kind: str, n: int, n_queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "isotropic":
        return unit(rng.standard_normal((n, dim))), unit(rng.standard_normal((n_queries, dim)))
    centers = rng.standard_normal((1000, dim))
    docs = centers[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim))
    queries = centers[rng.integers(0, 1000, n_queries)] + 0.5 * rng.standard_normal((n_queries, dim))
    # noise 0.5 per dimension: each vector is about as far from its centre as the centres are from the origin / 2
    return unit(docs), unit(queries)


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def bench_encode(model, texts: list[str], repeats: int, batch_size: int) -> dict:
    from md2pr_st.index import encode

    def ours():
        encode(model, texts, "document", batch_size=batch_size, show_progress_bar=False)

    def plain():
        model.encode(texts, batch_size=batch_size, show_progress_bar=False, normalize_embeddings=True)

    ours()  # warm-up
    t_ours, t_plain = [], []
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        t_ours.append(median_time(ours, 1))
        t_plain.append(median_time(plain, 1))
    return {"ours_s": statistics.median(t_ours), "plain_s": statistics.median(t_plain)}


def bench_search(docs: np.ndarray, queries: np.ndarray, repeats: int, label: str, k: int = 10) -> dict:
    from md2pr_st.index import DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_EF_SEARCH, FaissIndex

    ids = [str(i) for i in range(len(docs))]
    flat = FaissIndex.build(docs, ids, "Flat")
    docs_t, queries_t = torch.from_numpy(docs), torch.from_numpy(queries)
    t_faiss = median_time(lambda: flat.index.search(queries, 100), repeats)
    t_torch = median_time(lambda: torch.topk(queries_t @ docs_t.T, 100, dim=1), repeats)
    _, exact = flat.index.search(queries, k)
    start = time.perf_counter()
    hnsw = FaissIndex.build(docs, ids, "HNSW32")
    build_s = time.perf_counter() - start
    t_hnsw = median_time(lambda: hnsw.index.search(queries, k), repeats)
    t_flat_k = median_time(lambda: flat.index.search(queries, k), repeats)
    _, approx = hnsw.index.search(queries, k)
    print(
        f"[{label}] n={len(docs):,} queries={len(queries)} dim={docs.shape[1]}\n"
        f"  exact top-100: FAISS Flat {t_faiss * 1e3:.1f} ms, torch matmul+topk {t_torch * 1e3:.1f} ms "
        f"-> torch/FAISS = {t_torch / t_faiss:.2f}\n"
        f"  HNSW32 (efConstruction={DEFAULT_HNSW_EF_CONSTRUCTION}, efSearch={DEFAULT_HNSW_EF_SEARCH}, "
        f"built in {build_s:.1f} s): recall@{k} vs exact = "
        f"{recall_at(approx, exact, k):.4f}, speed-up vs exact = {t_flat_k / t_hnsw:.1f}x "
        f"({t_flat_k * 1e3:.1f} ms -> {t_hnsw * 1e3:.1f} ms)",
        flush=True,
    )
    return {
        "label": label,
        "n": len(docs),
        "queries": len(queries),
        "dim": int(docs.shape[1]),
        "exact_top100_faiss_flat_s": t_faiss,
        "exact_top100_torch_topk_s": t_torch,
        "ratio_torch_over_faiss": t_torch / t_faiss,
        "hnsw": {
            "factory": "HNSW32",
            "ef_construction": DEFAULT_HNSW_EF_CONSTRUCTION,
            "ef_search": DEFAULT_HNSW_EF_SEARCH,
            "build_s": build_s,
        },
        "k": k,
        "exact_top_k_flat_s": t_flat_k,
        "hnsw_top_k_s": t_hnsw,
        "hnsw_recall_at_k": recall_at(approx, exact, k),
        "hnsw_speedup_over_flat": t_flat_k / t_hnsw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="random vectors per synthetic benchmark")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode-texts", type=int, default=256, help="RAG24 passages for the encode benchmark")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-real", action="store_true", help="skip the benchmarks that need MiniLM + RAG24")
    parser.add_argument("--isotropic", action="store_true", help="also i.i.d. Gaussian vectors (worst case)")
    parser.add_argument("--index-dir", default="runs/bench/minilm-rag24-flat", help="cached RAG24 Flat index")
    parser.add_argument("--output", default=None, help="write every measurement as JSON here")
    args = parser.parse_args()
    print(f"torch threads={torch.get_num_threads()}, faiss threads={faiss.omp_get_max_threads()}", flush=True)
    result = {
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_1min_before": os.getloadavg()[0],
        "search": [],
    }

    if not args.skip_real:
        from sentence_transformers import SentenceTransformer

        from md2pr_st.data import load_rag24
        from md2pr_st.index import FaissIndex, IndexMismatchError, encode
        from md2pr_st.models import resolve_model_name

        model = SentenceTransformer(resolve_model_name(None), device="cpu")
        data = load_rag24("all")
        texts = data.corpus["text"][: args.encode_texts]
        enc = bench_encode(model, texts, args.repeats, args.batch_size)
        print(
            f"[encode] {len(texts)} RAG24 passages, all-MiniLM-L6-v2, max_seq_length={model.max_seq_length}: "
            f"ours {enc['ours_s']:.2f} s, plain SentenceTransformer.encode {enc['plain_s']:.2f} s "
            f"-> plain/ours = {enc['plain_s'] / enc['ours_s']:.3f} (target >= 0.95)",
            flush=True,
        )
        result["encode"] = {"texts": len(texts), "max_seq_length": model.max_seq_length, **enc,
                            "ratio_plain_over_ours": enc["plain_s"] / enc["ours_s"]}  # fmt: skip
        try:
            index = FaissIndex.load(args.index_dir, model=model, corpus=data.corpus, factory="Flat")
        except (FileNotFoundError, IndexMismatchError):
            index = FaissIndex.from_model(model, data.corpus, show_progress_bar=True)
            index.save(args.index_dir)
        docs = index.index.reconstruct_n(0, len(index))
        queries = encode(model, data.queries["text"], "query")
        result["search"].append(bench_search(docs, queries, args.repeats, "RAG24 MiniLM embeddings"))

    for kind in ("clustered", "isotropic") if args.isotropic else ("clustered",):
        docs, queries = random_vectors(kind, args.n, args.queries, args.dim)
        result["search"].append(bench_search(docs, queries, args.repeats, f"random {kind}"))
    result["load_average_1min_after"] = os.getloadavg()[0]
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
