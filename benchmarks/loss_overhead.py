"""Overhead of MD2PRLoss (sentence + word level; online teacher, and offline recorded targets) over
MultipleNegativesRankingLoss.

Student and teacher backbone: all-MiniLM-L6-v2 (the embedded copy; the teacher gets a random one-logit head,
which costs the same as a trained one). Batch 16 queries, 4 hard negatives each, max length 128 tokens (student
sequences and teacher pairs). A "step" is what the trainer does per batch after collation: zero_grad, loss
forward, backward, AdamW step. Reported:

1. median step time MD2PRLoss / MultipleNegativesRankingLoss, with the online teacher (target <= 2.0) and with
   offline targets (target <= 1.15): the batch's pairs recorded once by ``AttentionRecorder`` (top_k 16, as the
   false-negative filter's pass would) and read by ``OfflineTeacher``, so the step runs no teacher forward;
2. the word-level loss math alone (decoding + alignment + target pooling + interaction maps + KL, forward and
   backward; teacher forward excluded) as a fraction of the MNRL student step (target <= 10%);
3. peak memory of an MD2PR step / an MNRL step (target <= 1.5): CUDA peak allocated memory on a GPU; on a CPU the
   process's peak resident set (VmHWM, reset before each step), both in total and above the pre-step level;
4. the attention store: bytes per pair with top_k 16 and with all tokens (float16), the time to record the batch's
   pairs and to read them back, and how close the top-16 targets are: the share of each attention row's mass the
   top 16 hold, and L_w (T_a 0.4) and its gradient with respect to the student's token embeddings, top 16 against
   the online teacher.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/loss_overhead.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

WORDS = (
    "the of and to in is was for on that with as by at from his her they which this are be have had not but what "
    "all were when we there can an your more one their if has would about how said up out them so some into "
    "retrieval dense passage query document teacher student model score rank search index vector language "
    "python snake java coffee island tea cat dog paris france capital city river sea ocean trauma cope network "
    "learning training knowledge distillation attention layer token embedding similarity contrastive negative "
    "positive relevance judgment corpus benchmark evaluation precision recall encoder decoder transformer"
).split()


def make_texts(n: int, words: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the CPU process's VmHWM after resetting it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = rss_kib("VmHWM") * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def store_bytes(path: Path) -> int:
    """Bytes of an attention store's shards (the manifest and the tokenizer are a fixed cost per store)."""
    return sum(entry["bytes"] for entry in json.loads((path / "manifest.json").read_text())["shards"])


def record_stores(teacher, pairs, device: torch.device) -> tuple[Path, dict[str, float], dict[str, float]]:
    """Record the pairs, as the false-negative filter's pass would, with top_k 16 (what training reads) and with all
    tokens (for the size only): the store folder, the recording time and the shard bytes per pair of each."""
    from md2pr_st.teacher import AttentionRecorder

    folder = Path(tempfile.mkdtemp(prefix="md2pr_attention_store_"))
    record_s, bytes_per_pair = {}, {}
    for name, top_k in (("top_k_16", 16), ("all", None)):
        sync(device)
        start = time.perf_counter()
        AttentionRecorder(teacher, folder / name, top_k=top_k).score(pairs)
        record_s[name] = time.perf_counter() - start
        bytes_per_pair[name] = store_bytes(folder / name) / len(pairs)
    return folder, record_s, bytes_per_pair


def top_k_closeness(student, features, teacher, offline, pairs) -> dict[str, float]:
    """How close the offline top-k targets are to the online teacher's: mean share of a row's attention mass in the
    stored top-k (as the teacher gives it, and sharpened with T_a 0.4 as L_w uses it), and the relative change of
    L_w (T_a 0.4, the loss default), the cosine and the norm ratio of its gradients with respect to the student's
    token embeddings."""
    from md2pr_st.losses._shared import decode_columns, embed_with_tokens
    from md2pr_st.losses.word_level_distillation import word_level_loss_from_outputs

    online, recorded = teacher.attention(pairs), offline.attention(pairs)
    kept = [float((a.weights * (b.weights > 0)).sum(1).mean()) for a, b in zip(online, recorded)]
    sharp = [a.weights**2.5 / (a.weights**2.5).sum(1, keepdim=True) for a in online]  # A^(1 / T_a), T_a = 0.4
    kept_sharp = [float((a * (b.weights > 0)).sum(1).mean()) for a, b in zip(sharp, recorded)]
    texts = decode_columns(student, [dict(f) for f in features])
    with torch.no_grad():
        base = embed_with_tokens(student, [dict(f) for f in features])
    values, grads = [], []
    for blocks in (online, recorded):
        outputs = [{k: v.detach().requires_grad_(k == "token_embeddings") for k, v in o.items()} for o in base]
        loss, _ = word_level_loss_from_outputs(outputs, texts, blocks, (True, True), 0.05, 32, 0.4)
        loss.backward()
        values.append(loss.item())
        grads.append(torch.cat([o["token_embeddings"].grad.reshape(-1) for o in outputs]))
    return {
        "top_k_row_mass_kept": statistics.mean(kept),
        "top_k_row_mass_kept_sharpened": statistics.mean(kept_sharp),
        "word_level_relative_change": values[1] / values[0] - 1,
        "word_level_gradient_cosine": float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)),
        "word_level_gradient_norm_ratio": float(grads[1].norm() / grads[0].norm()),
    }


def time_steps(losses: dict, run_step, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Step times and (pre-step, peak) memory of each loss: one warm-up step each, then ``repeats`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in losses}
    peaks: dict[str, list[tuple[int, int]]] = {k: [] for k in losses}
    for loss_fn in losses.values():
        run_step(loss_fn)  # warm-up
    for _ in range(repeats):
        for name, loss_fn in losses.items():  # interleaved, so drifting machine load hits all alike
            sync(device)
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                run_step(loss_fn)
                sync(device)
                times[name].append(time.perf_counter() - start)
            peaks[name].append((memory.start, memory.peak))
    return times, peaks


def breakdown(student, features, teacher, offline, batch_pairs, repeats: int, device: torch.device) -> dict:
    """Medians of the MD2PR step's parts: the teacher forward, reading the offline targets back, and the word-level
    math alone (teacher output precomputed: decoding + alignment + pooling + maps + KL, forward and backward)."""
    from md2pr_st.losses._shared import decode_columns, embed_with_tokens
    from md2pr_st.losses.word_level_distillation import word_level_loss_from_outputs

    texts = decode_columns(student, [dict(f) for f in features])
    pairs = [(texts[0][i].text, column[i].text) for column in texts[1:] for i in range(len(texts[0]))]
    teacher_times, word_times, decode_times, read_times = [], [], [], []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        blocks = teacher.score_and_attend(pairs).attention
        sync(device)
        teacher_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        offline.score_and_attend(batch_pairs)
        read_times.append(time.perf_counter() - start)
        with torch.no_grad():
            outputs = embed_with_tokens(student, [dict(f) for f in features])
        outputs = [{k: v.detach().requires_grad_(k == "token_embeddings") for k, v in o.items()} for o in outputs]
        sync(device)
        start = time.perf_counter()
        texts = decode_columns(student, [dict(f) for f in features])
        decode_times.append(time.perf_counter() - start)
        word_loss, targets = word_level_loss_from_outputs(outputs, texts, blocks, (True, True), 0.05, 32)
        word_loss.backward()
        sync(device)
        word_times.append(time.perf_counter() - start)
    return {
        "teacher_forward_s": statistics.median(teacher_times),
        "attention_store_read_s": statistics.median(read_times),
        "word_level_math_s": statistics.median(word_times),
        "word_level_decode_s": statistics.median(decode_times),
        "aligned_fraction": targets.aligned_fraction,
    }


def print_summary(result: dict) -> None:
    med, store, close = result["median_step_s"], result["attention_store_bytes_per_pair"], result
    print(
        f"\nstep time MD2PR / MNRL: {result['step_time_ratio_md2pr_over_mnrl']:.2f} (target <= 2.0)"
        f"\nstep time MD2PR with offline targets / MNRL: {result['step_time_ratio_md2pr_offline_over_mnrl']:.2f} "
        "(target <= 1.15)"
        f"\nthe same from the fastest steps: MD2PR / MNRL {result['step_time_ratio_min_md2pr_over_mnrl']:.2f}, with "
        f"offline targets {result['step_time_ratio_min_md2pr_offline_over_mnrl']:.2f}"
        f"\nword-level math / student step: {100 * result['word_level_math_share_of_student_step']:.1f}% "
        "(target <= 10%)"
        f"\npeak memory MD2PR / MNRL: {result['peak_memory_ratio']:.2f} (target <= 1.5); above the pre-step level: "
        f"{result['peak_memory_above_pre_step_ratio']:.2f}"
        f"\nbreakdown: MNRL step {med['mnrl']:.3f}s, MD2PR step {med['md2pr']:.3f}s, teacher forward "
        f"{result['teacher_forward_s']:.3f}s, word-level math {result['word_level_math_s']:.3f}s "
        f"(of which decoding {result['word_level_decode_s']:.3f}s)"
        f"\nattention store: {store['top_k_16']:.0f} bytes/pair (top_k 16), {store['all']:.0f} (all tokens); "
        f"recording the batch {result['attention_store_record_s']['top_k_16']:.3f}s, reading it back "
        f"{result['attention_store_read_s']:.3f}s, MD2PR step with offline targets {med['md2pr_offline']:.3f}s"
        f"\ntop 16 vs online: {100 * close['top_k_row_mass_kept']:.1f}% of each row's mass kept "
        f"({100 * close['top_k_row_mass_kept_sharpened']:.1f}% after T_a 0.4), L_w "
        f"{100 * close['word_level_relative_change']:+.2f}%, gradient cosine {close['word_level_gradient_cosine']:.4f}, "
        f"norm ratio {close['word_level_gradient_norm_ratio']:.3f}"
        f"\nload average (1 min) before / after: {result['load_average_1min_before_after']}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per loss (after 1 warm-up step)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="optional JSON file for the numbers")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    from sentence_transformers.cross_encoder.model import CrossEncoder
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.model import SentenceTransformer

    from md2pr_st.losses import MD2PRLoss
    from md2pr_st.losses._shared import decode_columns, teacher_pairs
    from md2pr_st.models import embedded_student_path
    from md2pr_st.teacher import OfflineTeacher, Teacher

    device = torch.device(args.device)
    torch.manual_seed(0)
    path = str(embedded_student_path())
    student = SentenceTransformer(path, device=str(device))
    student.max_seq_length = args.max_length
    student.train()
    teacher = Teacher(CrossEncoder(path, num_labels=1, device=str(device)), max_length=args.max_length)
    teacher.cache_scores = False  # every step must pay for its teacher forward, as with fresh batches

    rng = random.Random(0)
    b, n = args.batch_size, args.negatives
    columns = [make_texts(b, 8, rng)] + [make_texts(b, 140, rng) for _ in range(1 + n)]
    features = [student.preprocess(texts) for texts in columns]
    features = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in f.items()} for f in features]

    def fresh(fs):  # the model writes its outputs into the feature dicts: hand each step clean copies
        return [dict(f) for f in fs]

    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-6)

    def run_step(loss_fn) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = loss_fn(fresh(features), None)
        loss = torch.stack(list(out.values())).sum() if isinstance(out, dict) else out
        loss.backward()
        optimizer.step()

    # Offline targets for exactly the pairs the loss asks for (the texts it decodes from these features).
    load_before = os.getloadavg()
    batch_pairs = teacher_pairs(decode_columns(student, fresh(features)))
    store_dir, record_s, bytes_per_pair = record_stores(teacher, batch_pairs, device)
    offline = OfflineTeacher(store_dir / "top_k_16")

    losses = {
        "mnrl": MultipleNegativesRankingLoss(student),
        "md2pr": MD2PRLoss(student, teacher=teacher, alpha=1.0, beta=1.0),
        "md2pr_offline": MD2PRLoss(student, teacher=offline, alpha=1.0, beta=1.0),
    }
    times, peaks = time_steps(losses, run_step, args.repeats, device)

    parts = breakdown(student, features, teacher, offline, batch_pairs, args.repeats, device)
    closeness = top_k_closeness(student, features, teacher, offline, batch_pairs)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(p for _, p in v) for k, v in peaks.items()}
    above = {k: max(p - s for s, p in v) for k, v in peaks.items()}
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": b,
        "hard_negatives": n,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "median_step_s": med,
        "step_time_ratio_md2pr_over_mnrl": med["md2pr"] / med["mnrl"],
        "step_time_ratio_md2pr_offline_over_mnrl": med["md2pr_offline"] / med["mnrl"],
        # On a loaded machine the fastest step is the least disturbed one: a second view of the same ratios.
        "min_step_s": {k: min(v) for k, v in times.items()},
        "step_time_ratio_min_md2pr_offline_over_mnrl": min(times["md2pr_offline"]) / min(times["mnrl"]),
        "step_time_ratio_min_md2pr_over_mnrl": min(times["md2pr"]) / min(times["mnrl"]),
        "attention_store_bytes_per_pair": bytes_per_pair,
        "attention_store_record_s": record_s,
        **closeness,
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        **parts,
        "word_level_math_share_of_student_step": parts["word_level_math_s"] / med["mnrl"],
        "peak_memory_bytes": peak,
        "peak_memory_ratio": peak["md2pr"] / peak["mnrl"],
        "peak_memory_above_pre_step_bytes": above,
        "peak_memory_above_pre_step_ratio": above["md2pr"] / max(above["mnrl"], 1),
    }
    print(json.dumps(result, indent=2))
    print_summary(result)
    if args.output:
        from md2pr_st.utils import write_json

        write_json(args.output, result)


if __name__ == "__main__":
    main()
