"""How much each part of the MD2PR loss pulls on the student at the start of training, on real batches.

For each batch the student and the teacher run once; then, for the loss settings given (or a grid of them), the
gradient of each weighted part with respect to the student's parameters is taken separately:

    g_c = grad L_c,   g_s = grad (alpha * L_s),   g_w = grad (beta * L_w)

and the script prints ``|g_s| / |g_c|`` and ``|g_w| / |g_c|`` (a part that pulls 100x less than L_c is switched
off in practice; one that pulls 100x more drowns it), the cosines between the parts' gradients, and for the word
level the mean row entropy (nats) of the teacher's target and of the student's interaction map next to the entropy
of a uniform row: a target much flatter than the student's map teaches the student to flatten its map, not where a
query word's attention goes. Medians over the batches.

    HF_HUB_OFFLINE=1 python benchmarks/loss_balance.py --teacher runs/teacher --data rag24
    HF_HUB_OFFLINE=1 python benchmarks/loss_balance.py --teacher runs/teacher --data runs/x/round_1/filtered \\
        --alpha 1 --beta 1 --word-temperature 0.1 --attention-temperature 0.5
    HF_HUB_OFFLINE=1 python benchmarks/loss_balance.py --teacher runs/teacher --data rag24 --grid

``--data``: ``rag24`` (rows from the RAG24 train topics: the best-graded passage as the positive and passages
of the query's own pool judged 0 or 1 as hard negatives; teacher scores online) or a ``datasets`` folder with
``query, positive, negative_1..n[, scores]`` (the output of ``md2pr filter``). ``--model``: any student (default:
the embedded all-MiniLM-L6-v2). The library defaults are what ``LossArguments()`` holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def judged_rows(num_negatives: int, max_rows: int, seed: int):
    """(query, positive, negative_1..n) from RAG24 train topics: best-graded positive, own-pool grade 0/1 negatives."""
    import random

    from datasets import Dataset

    from md2pr_st.data import load_rag24

    data = load_rag24("train")
    texts = dict(zip(data.corpus["id"], data.corpus["text"]))
    rows = {"query": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(num_negatives)}}
    for qid, query in zip(data.queries["id"], data.queries["text"]):
        judged = data.qrels[qid]
        best = max(judged, key=lambda d: (judged[d], d))
        negatives = sorted(d for d, g in judged.items() if g <= 1)
        if judged[best] < 2 or len(negatives) < num_negatives:
            continue
        random.Random(f"{seed}:{qid}").shuffle(negatives)
        rows["query"].append(query)
        rows["positive"].append(texts[best])
        for i in range(num_negatives):
            rows[f"negative_{i + 1}"].append(texts[negatives[i]])
    dataset = Dataset.from_dict(rows).shuffle(seed=seed)
    return dataset.select(range(min(max_rows, len(dataset))))


def load_rows(args):
    from datasets import load_from_disk

    if args.data == "rag24":
        return judged_rows(args.negatives, args.batch_size * args.batches, args.seed)
    dataset = load_from_disk(args.data).shuffle(seed=args.seed)
    keep = ["query", "positive", *[c for c in dataset.column_names if c.startswith("negative_")], "scores"]
    dataset = dataset.select_columns([c for c in keep if c in dataset.column_names])
    return dataset.select(range(min(args.batch_size * args.batches, len(dataset))))


def configurations(args, LossArguments):  # noqa: N803 (a class passed in to keep imports lazy)
    """The LossArguments to measure: the given one, or a grid around it."""
    given = dataclasses.replace(
        LossArguments(),
        **{
            k: v
            for k, v in vars(args).items()
            if k in {f.name for f in dataclasses.fields(LossArguments)} and v is not None
        },
    )
    if not args.grid:
        return [given]
    grid = []
    for tau_w, t_a, t_t in itertools.product((0.05, 0.1, 0.2), (1.0, 0.5, 0.25), (1.0, 2.0)):
        grid.append(
            dataclasses.replace(given, word_temperature=tau_w, attention_temperature=t_a, teacher_temperature=t_t)
        )
    return grid


def flat_grad(part, params):
    import torch

    grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def entropy(rows, mask):
    """Mean entropy (nats) of the distribution rows ``rows`` (..., V) selected by ``mask`` (...)."""
    import torch

    h = -(torch.xlogy(rows, rows)).sum(dim=-1)
    return float(h[mask].mean())


def measure_batch(model, teacher, batch, configs, max_seq_length):
    """Per config: gradient norms of each part, their cosines, and the word level's entropies."""
    import torch

    from md2pr_st.losses import MD2PRLoss
    from md2pr_st.losses._shared import (
        decode_columns,
        embed_with_tokens,
        keep_original_texts,
        original_texts_hidden,
        teacher_pairs,
    )
    from md2pr_st.losses.md2pr import masked_contrastive_loss
    from md2pr_st.losses.sentence_level_distillation import sentence_level_kl
    from md2pr_st.losses.word_level_distillation import (
        SameVocabulary,
        _concat_rows,
        build_word_level_targets,
        student_word_distribution,
        word_level_loss,
    )

    columns = ["query", "positive", *sorted((c for c in batch if c.startswith("negative_")), key=lambda c: int(c[9:]))]
    keep_original_texts(model)  # as in training: the teacher reads the rows' original texts
    features = [model.preprocess(batch[c]) for c in columns]
    texts = decode_columns(model, features)
    teacher_out = teacher.score_and_attend(teacher_pairs(texts))
    scores = torch.as_tensor(batch["scores"]) if "scores" in batch else teacher_out.scores.reshape(len(texts[0]), -1)
    params = [p for p in model.parameters() if p.requires_grad]
    with original_texts_hidden(features):
        outputs = embed_with_tokens(model, features)
    query = outputs[0]["sentence_embedding"]
    candidates = [out["sentence_embedding"] for out in outputs[1:]]
    base = MD2PRLoss(model, alpha=0.0, beta=0.0)
    flagged = torch.zeros(len(query), len(candidates), dtype=torch.bool)
    l_c = masked_contrastive_loss(query, candidates, flagged, configs[0].scale, base.similarity_fct)
    g_c = flat_grad(l_c, params)
    student_scores = torch.stack([base.similarity_fct(query, c).diagonal() for c in candidates], dim=1)
    same_vocab = SameVocabulary(teacher.tokenizer)(model, features)
    query_tokens = outputs[0]["token_embeddings"]
    passage_tokens = _concat_rows([out["token_embeddings"] for out in outputs[1:]])
    results = []
    cache: dict = {}
    for config in configs:
        key_s = ("s", config.student_temperature, config.teacher_temperature)
        if key_s not in cache:
            l_s = sentence_level_kl(student_scores, scores, *key_s[1:])
            cache[key_s] = (l_s.item(), flat_grad(l_s, params))
        key_w = ("w", config.word_temperature, config.attention_temperature)
        if key_w not in cache:
            targets = build_word_level_targets(
                texts[0], texts[1:], teacher_out.attention, same_vocab, query_tokens.shape[1],
                passage_tokens.shape[1], config.attention_temperature,
            )  # fmt: skip
            l_w = word_level_loss(query_tokens, passage_tokens, targets, config.word_temperature, 64)
            with torch.no_grad():
                student_rows = student_word_distribution(
                    query_tokens[targets.query_index], passage_tokens[targets.passage_index], targets.query_unit,
                    targets.query_weight, targets.passage_unit, targets.target.shape[1:], config.word_temperature,
                )  # fmt: skip
            valid_units = targets.passage_unit.unsqueeze(1) == torch.arange(targets.target.shape[2]).view(1, -1, 1)
            widths = valid_units.any(dim=-1).sum(dim=-1).float()  # passage units per pair
            uniform = float(torch.log(widths).repeat_interleave(targets.row_mask.sum(dim=1)).mean())
            cache[key_w] = (
                l_w.item(),
                flat_grad(l_w, params),
                entropy(targets.target, targets.row_mask),
                entropy(student_rows, targets.row_mask),
                uniform,
            )
        l_s, g_s = cache[key_s]
        l_w, g_w, h_teacher, h_student, h_uniform = cache[key_w]
        g_s, g_w = config.alpha * g_s, config.beta * g_w
        norm_c = float(g_c.norm())

        def cos(a, b):
            return float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else 0.0

        results.append(
            {
                "L_c": l_c.item(), "L_s": l_s, "L_w": l_w,
                "ratio_s": float(g_s.norm()) / norm_c, "ratio_w": float(g_w.norm()) / norm_c,
                "cos_cs": cos(g_c, g_s), "cos_cw": cos(g_c, g_w), "cos_sw": cos(g_s, g_w),
                "H_teacher": h_teacher, "H_student": h_student, "H_uniform": h_uniform,
            }
        )  # fmt: skip
    return results


def main(argv=None):
    from md2pr_st.cli.arguments import LossArguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="a cross-encoder: Hub id or folder")
    parser.add_argument("--model", default=None, help="the student (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--data", default="rag24", help="'rag24' or a datasets folder (query, positive, negative_*)")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=4, help="hard negatives per row (--data rag24)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--teacher-max-length", type=int, default=256)
    parser.add_argument(
        "--teacher-layers", default="-1", help="comma-separated teacher layers whose attention is used"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--grid", action="store_true", help="tau_w x T_a x T_t around the given settings")
    parser.add_argument("--output", default=None, help="write all measurements as JSON here")
    for field in dataclasses.fields(LossArguments):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=float, default=None,
                            help=f"{field.metadata.get('help', '')} (default {field.default})")  # fmt: skip
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher import Teacher

    start = time.perf_counter()
    model = SentenceTransformer(resolve_model_name(args.model), device="cpu")
    model.max_seq_length = args.max_seq_length
    layers = [int(x) for x in args.teacher_layers.split(",")]
    teacher = Teacher(args.teacher, max_length=args.teacher_max_length, layers=layers, device="cpu")
    rows = load_rows(args)
    configs = configurations(args, LossArguments)
    per_config = [[] for _ in configs]
    for b in range(args.batches):
        batch = rows[b * args.batch_size : (b + 1) * args.batch_size]
        if not batch["query"]:
            break
        for k, result in enumerate(measure_batch(model, teacher, batch, configs, args.max_seq_length)):
            per_config[k].append(result)
        print(f"batch {b + 1}/{args.batches} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    keys = list(per_config[0][0])
    medians = [{key: statistics.median(r[key] for r in results) for key in keys} for results in per_config]
    print(f"student {args.model or 'all-MiniLM-L6-v2 (embedded)'}, teacher {args.teacher} (layers {layers}), "
          f"data {args.data}, {len(per_config[0])} batches of {args.batch_size}; medians")  # fmt: skip
    head = f"{'alpha':>6} {'beta':>5} {'T_s':>5} {'T_t':>4} {'tau_w':>6} {'T_a':>5} |"
    head += " |g_s|/|g_c| |g_w|/|g_c| cos(c,s) cos(c,w) cos(s,w) | H_teacher H_student H_uniform"
    print(head)
    for config, m in zip(configs, medians):
        print(
            f"{config.alpha:>6g} {config.beta:>5g} {config.student_temperature:>5g} {config.teacher_temperature:>4g} "
            f"{config.word_temperature:>6g} {config.attention_temperature:>5g} | {m['ratio_s']:>11.3f} "
            f"{m['ratio_w']:>11.3f} {m['cos_cs']:>8.3f} {m['cos_cw']:>8.3f} {m['cos_sw']:>8.3f} | "
            f"{m['H_teacher']:>9.3f} {m['H_student']:>9.3f} {m['H_uniform']:>9.3f}"
        )
    inside = [
        (c.alpha == 0 or 0.2 <= m["ratio_s"] <= 5) and (c.beta == 0 or 0.2 <= m["ratio_w"] <= 5)
        for c, m in zip(configs, medians)
    ]
    print(f"each part switched on (weight > 0) within 0.2x-5x of L_c: {sum(inside)} of {len(configs)} settings")
    if args.output:
        record = {"args": vars(args), "configs": [dataclasses.asdict(c) for c in configs], "medians": medians,
                  "batches": per_config, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=1))
    return medians


if __name__ == "__main__":
    main()
