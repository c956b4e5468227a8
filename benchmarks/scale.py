"""How encoding, indexing and mining grow with the corpus: 10k, 100k and 1M synthetic passages.

The point is growth, not quality: passages are short texts drawn from 1,000 synthetic topics (so that neighbourhoods
exist, as in real embeddings), the student is a static word-embedding model (sentence-transformers'
``StaticEmbedding``, 128-d, normalised), so that encoding a million passages takes minutes on a CPU. For each size, in a
fresh process (so that its peak memory is its own):

1. the corpus is written as a ``datasets`` folder and memory-mapped back (the texts are not held in RAM);
2. ``CorpusEmbeddingCache`` encodes it in chunks to disk and fills a FAISS index chunk by chunk;
3. ``mine_hard_negatives`` mines 8 negatives for 1,000 queries (one positive each);
4. the peak resident memory (``VmHWM``) is compared with the bytes of the embeddings themselves (N x dim x 4): the
   pipeline should hold no second copy of the texts or the embeddings, so peak RSS ~ embedding bytes + a constant.

At the largest size it also measures approximate search: ``HNSW32`` (efConstruction 100, efSearch 128) against exact
search, recall@10 of the exact top 10 and the speed-up, over 1,000 queries.

    HF_HUB_OFFLINE=1 python benchmarks/scale.py --sizes 10000,100000,1000000 --output runs/scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIM = 128
VOCAB = 20_000
TOPICS = 1_000


def peak_rss_mb() -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_student(folder: Path):
    """A normalised static word-embedding SentenceTransformer over the synthetic vocabulary, saved to ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    if (folder / "modules.json").is_file():
        return SentenceTransformer(str(folder), device="cpu")
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(len(vocab), DIM, generator=generator)
    model = SentenceTransformer(
        modules=[StaticEmbedding(tokenizer, embedding_weights=weights), Normalize()], device="cpu"
    )
    model.save(str(folder))
    return model


def passages(n: int, seed: int, words: int = 24):
    """``n`` texts: each draws its words mostly from one topic's 200 words, the rest from the whole vocabulary."""
    import numpy as np

    rng = np.random.default_rng(seed)
    topic_words = rng.integers(0, VOCAB, (TOPICS, 200))
    for start in range(0, n, 10_000):
        size = min(10_000, n - start)
        topics = rng.integers(0, TOPICS, size)
        own = topic_words[topics[:, None], rng.integers(0, 200, (size, words))]
        noise = rng.integers(0, VOCAB, (size, words))
        chosen = np.where(rng.random((size, words)) < 0.7, own, noise)
        yield [" ".join(f"w{w}" for w in row) for row in chosen]


def write_corpus(n: int, folder: Path) -> None:
    from datasets import Dataset, concatenate_datasets

    if (folder / "dataset_info.json").is_file():
        return
    parts, start = [], 0
    for texts in passages(n, seed=n):
        parts.append(Dataset.from_dict({"id": [f"d{start + i}" for i in range(len(texts))], "text": texts}))
        start += len(texts)
    concatenate_datasets(parts).save_to_disk(str(folder))


def one_size(n: int, out: Path, queries: int) -> dict:
    """Encode, index and mine one corpus size in this process (called in a child process by ``main``)."""
    from datasets import Dataset, load_from_disk

    from md2pr_st.index import CorpusEmbeddingCache
    from md2pr_st.mining import mine_hard_negatives

    student = build_student(out / "student")
    corpus_dir = out / f"corpus_{n}"
    write_corpus(n, corpus_dir)
    corpus = load_from_disk(str(corpus_dir))  # memory-mapped Arrow: the texts stay on disk
    before = peak_rss_mb()
    record: dict = {"size": n, "dim": DIM, "embedding_mb": round(n * DIM * 4 / 2**20, 1), "rss_after_load_mb": before}
    t0 = time.perf_counter()
    cache = CorpusEmbeddingCache(student, corpus, out / f"embeddings_{n}", chunk_size=50_000, batch_size=1024)
    index = cache.build_index("Flat")
    record["encode_and_index_s"] = round(time.perf_counter() - t0, 1)
    rows = corpus.select(range(0, n, max(1, n // queries)))[:queries]
    pairs = Dataset.from_dict({"query": [" ".join(t.split()[:6]) for t in rows["text"]], "positive": rows["text"]})
    t0 = time.perf_counter()
    mined, stats = mine_hard_negatives(
        pairs, corpus, student, num_negatives=8, range_max=50, cache_dir=out / f"embeddings_{n}",
        chunk_size=50_000, batch_size=1024, return_stats=True, show_progress_bar=False,
    )  # fmt: skip
    record["mine_s"] = round(time.perf_counter() - t0, 1)
    record["mined_rows"] = len(mined)
    record["chunks_reused_by_mining"] = stats.chunks_reused
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    record["peak_minus_embeddings_mb"] = round(record["peak_rss_mb"] - record["embedding_mb"], 1)
    del index
    return record


def hnsw_vs_exact(n: int, out: Path, queries: int) -> dict:
    """recall@10 and speed of HNSW32 against exact search on the size-n corpus's cached embeddings."""
    import numpy as np
    from datasets import load_from_disk

    from md2pr_st.index import CorpusEmbeddingCache, FaissIndex, encode

    student = build_student(out / "student")
    corpus = load_from_disk(str(out / f"corpus_{n}"))
    cache = CorpusEmbeddingCache(student, corpus, out / f"embeddings_{n}", chunk_size=50_000, batch_size=1024)
    vectors = cache.compute()
    texts = [" ".join(t.split()[:6]) for t in corpus.select(range(7, n, max(1, n // queries)))[:queries]["text"]]
    q = encode(student, texts, "query", 1024, show_progress_bar=False)
    exact = FaissIndex.build(vectors, corpus["id"], "Flat")
    t0 = time.perf_counter()
    hnsw = FaissIndex.build(vectors, corpus["id"], "HNSW32")
    build_s = time.perf_counter() - t0
    del vectors
    timings = {"Flat": [], "HNSW32": []}
    results = {}
    for _ in range(3):  # medians over repeats, interleaved
        for name, index in (("Flat", exact), ("HNSW32", hnsw)):
            t0 = time.perf_counter()
            _, ids = index.search(q, 10)
            timings[name].append(time.perf_counter() - t0)
            results[name] = ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(results["Flat"], results["HNSW32"])])
    flat_s, hnsw_s = float(np.median(timings["Flat"])), float(np.median(timings["HNSW32"]))
    return {"size": n, "queries": len(texts), "hnsw_build_s": round(build_s, 1), "flat_search_s": round(flat_s, 3),
            "hnsw_search_s": round(hnsw_s, 4), "speedup": round(flat_s / hnsw_s, 1), "recall@10": round(float(recall), 4)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--output", default="runs/scale")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--hnsw", type=int, default=None, help=argparse.SUPPRESS)  # child process: HNSW vs Flat
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        print(json.dumps(one_size(args.one, out, args.queries)))
        return
    if args.hnsw is not None:
        print(json.dumps(hnsw_vs_exact(args.hnsw, out, args.queries)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    records = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--output", str(out), "--queries", str(args.queries)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), flush=True)
    cmd = [sys.executable, __file__, "--hnsw", str(sizes[-1]), "--output", str(out), "--queries", str(args.queries)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    hnsw = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{'size':>9} {'encode+index s':>15} {'mine s':>8} {'emb MB':>8} {'peak RSS MB':>12} {'peak - emb':>11}")
    for r in records:
        print(f"{r['size']:>9,} {r['encode_and_index_s']:>15} {r['mine_s']:>8} {r['embedding_mb']:>8} "
              f"{r['peak_rss_mb']:>12} {r['peak_minus_embeddings_mb']:>11}")  # fmt: skip
    for a, b in zip(records, records[1:]):
        grow = b["size"] / a["size"]
        print(f"x{grow:g} passages: encode+index x{b['encode_and_index_s'] / max(a['encode_and_index_s'], 1e-9):.1f}, "
              f"mine x{b['mine_s'] / max(a['mine_s'], 1e-9):.1f}, peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")  # fmt: skip
    print(f"HNSW32 at {hnsw['size']:,}: recall@10 {hnsw['recall@10']}, {hnsw['speedup']}x faster than Flat "
          f"({hnsw['hnsw_search_s']} s vs {hnsw['flat_search_s']} s for {hnsw['queries']} queries; build {hnsw['hnsw_build_s']} s)")  # fmt: skip
    (out / "scale.json").write_text(json.dumps({"sizes": records, "hnsw": hnsw}, indent=1))


if __name__ == "__main__":
    main()
