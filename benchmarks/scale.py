"""How encoding, indexing and mining grow with the corpus: 10k, 100k and 1M synthetic passages.

The point is growth, not quality: passages are short texts drawn from 1,000 synthetic topics (so that neighbourhoods
exist, as in real embeddings), the student is a static word-embedding model (sentence-transformers'
``StaticEmbedding``, 128-d, normalised), so that encoding a million passages takes minutes on a CPU. For each size, in a
fresh process (so that its peak memory is its own):

1. the corpus is written as a ``datasets`` folder and memory-mapped back (the texts are not held in RAM);
2. ``CorpusEmbeddingCache`` encodes it in chunks to disk and fills a FAISS index chunk by chunk;
3. that index is released and ``mine_hard_negatives`` mines 8 negatives for 1,000 queries (one positive each), as
   the pipeline's mining stage does: it reads the cached chunks back and builds its own index;
4. the peak resident memory is compared with the bytes of the embeddings themselves (N x dim x 4): the pipeline
   should hold no second copy of the texts or the embeddings, so peak RSS ~ embedding bytes + a constant. Two peaks:
   ``VmHWM`` (everything resident, including pages of memory-mapped files the kernel may drop at any time) and the
   peak of anonymous memory (``RssAnon``, sampled every 50 ms: what the process itself holds).

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
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIM = 128
VOCAB = 20_000
TOPICS = 1_000


def status_mb(field: str) -> float | None:
    """A memory line of ``/proc/self/status`` (``VmHWM``, ``RssAnon``, ...) in MB; None where it is missing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    import resource

    return status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonymousPeak:
    """The peak of ``RssAnon`` (anonymous resident memory: heap, arrays, the index; not file pages), sampled every
    ``interval`` seconds in a thread while the block runs, in MB."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_mb() -> float:
        return status_mb("RssAnon") or 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


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
    rows = corpus.select(range(0, n, max(1, n // queries)))[:queries]
    pairs = Dataset.from_dict({"query": [" ".join(t.split()[:6]) for t in rows["text"]], "positive": rows["text"]})
    before = peak_rss_mb()
    record: dict = {"size": n, "dim": DIM, "embedding_mb": round(n * DIM * 4 / 2**20, 1), "rss_after_load_mb": before,
                    "anon_after_load_mb": round(AnonymousPeak.now_mb(), 1)}  # fmt: skip
    with AnonymousPeak() as anon:
        t0 = time.perf_counter()
        cache = CorpusEmbeddingCache(student, corpus, out / f"embeddings_{n}", chunk_size=50_000, batch_size=1024)
        index = cache.build_index("Flat")
        record["encode_and_index_s"] = round(time.perf_counter() - t0, 1)
        del index
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
    record["peak_anon_mb"] = round(anon.peak_mb, 1)
    record["peak_anon_minus_embeddings_mb"] = round(anon.peak_mb - record["embedding_mb"], 1)
    return record


def ann_vs_exact(n: int, out: Path, queries: int, ef_values=(16, 64, 128, 256, 512)) -> dict:
    """HNSW32 against exact search on the size-n corpus's cached embeddings, for each ``efSearch``: recall@10 of the
    exact top 10, epsilon-recall@10 (ann-benchmarks' measure: a returned passage counts when its distance is within
    (1 + 0.01) x the exact 10th neighbour's, so that near-ties do not count as misses) and the speed-up (medians of
    3 repeats)."""
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

    def timed(index):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            scores, ids = index.index.search(q, 10)
            times.append(time.perf_counter() - t0)
        return scores, ids, float(np.median(times))

    exact_scores, exact_ids, flat_s = timed(exact)
    # unit vectors: distance = sqrt(2 - 2 cos); a hit is within (1 + eps) of the exact 10th neighbour's distance
    limit = (1.01 * np.sqrt(np.maximum(2 - 2 * exact_scores[:, 9], 0)))[:, None]
    rows = []
    for ef in ef_values:
        hnsw.set_search_params(ef_search=ef)
        scores, ids, hnsw_s = timed(hnsw)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, ids)])
        eps_recall = np.mean(np.sqrt(np.maximum(2 - 2 * scores, 0)) <= limit + 1e-7)
        rows.append({"ef_search": ef, "recall@10": round(float(recall), 4),
                     "epsilon_recall@10": round(float(eps_recall), 4), "hnsw_search_s": round(hnsw_s, 4),
                     "speedup": round(flat_s / hnsw_s, 1)})  # fmt: skip
    gaps = exact_scores[:, 0] - exact_scores[:, 9]
    return {"size": n, "queries": len(texts), "hnsw_build_s": round(build_s, 1), "flat_search_s": round(flat_s, 3),
            "median_cos_top1_minus_top10": round(float(np.median(gaps)), 4), "ef": rows}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--output", default="runs/scale")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--ann-size", type=int, default=None, help="corpus size of the HNSW check (default: the "
                        "largest; 0: skip it)")  # fmt: skip
    parser.add_argument("--ann", type=int, default=None, help=argparse.SUPPRESS)  # child process: HNSW vs Flat
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        print(json.dumps(one_size(args.one, out, args.queries)))
        return
    if args.ann is not None:
        print(json.dumps(ann_vs_exact(args.ann, out, args.queries)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    records = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--output", str(out), "--queries", str(args.queries)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), flush=True)
    print(f"\n{'size':>9} {'encode+index s':>15} {'mine s':>8} {'emb MB':>8} {'peak RSS MB':>12} {'peak anon MB':>13} "
          f"{'anon - emb':>11}")  # fmt: skip
    for r in records:
        print(f"{r['size']:>9,} {r['encode_and_index_s']:>15} {r['mine_s']:>8} {r['embedding_mb']:>8} "
              f"{r['peak_rss_mb']:>12} {r['peak_anon_mb']:>13} {r['peak_anon_minus_embeddings_mb']:>11}")  # fmt: skip
    for a, b in zip(records, records[1:]):
        grow = b["size"] / a["size"]
        print(f"x{grow:g} passages: encode+index x{b['encode_and_index_s'] / max(a['encode_and_index_s'], 1e-9):.1f}, "
              f"mine x{b['mine_s'] / max(a['mine_s'], 1e-9):.1f}, peak anon x{b['peak_anon_mb'] / a['peak_anon_mb']:.2f}")  # fmt: skip
    result = {"sizes": records}
    ann_size = sizes[-1] if args.ann_size is None else args.ann_size
    if ann_size:
        cmd = [sys.executable, __file__, "--ann", str(ann_size), "--output", str(out), "--queries", str(args.queries)]
        ann = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        )
        print(f"HNSW32 at {ann['size']:,} (build {ann['hnsw_build_s']} s; exact search {ann['flat_search_s']} s for "
              f"{ann['queries']} queries; median cos(top 1) - cos(top 10) {ann['median_cos_top1_minus_top10']}):")  # fmt: skip
        for row in ann["ef"]:
            print(f"  efSearch {row['ef_search']:>4}: recall@10 {row['recall@10']:.4f}, epsilon-recall@10 "
                  f"{row['epsilon_recall@10']:.4f}, {row['speedup']}x faster")  # fmt: skip
        result["ann"] = ann
    (out / "scale.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
