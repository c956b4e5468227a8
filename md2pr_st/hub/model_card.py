"""Model cards for MD2PR students: the host library's generated card, extended with MD2PR provenance.

:func:`write_model_card` reads the ``README.md`` that ``SentenceTransformer.save`` wrote (architecture, usage,
training details, losses, framework versions), keeps it, and puts in front of it what a user of an MD2PR model needs:
Hub metadata with a ``model-index`` built from ``metrics.json``, the teacher, the student base, loss weights and
temperatures, the false-negative filter of each mining round, the results table, plots, the exact training command,
limitations (including the data licence) and the citation. The template is
``model_cards/md2pr_model_card_template.md`` (Jinja2).

No text of the training or evaluation data goes into a card: the host's trainer copies dataset rows into the card
(``widget`` examples, the usage snippet's sentences, "Samples" tables), and RAG24's passages are MS MARCO v2.1 texts
under non-commercial terms. :func:`remove_dataset_texts` clears them from a model's card data when training, and
:func:`strip_dataset_texts` from a written card.

Inputs written by the pipeline:

- ``metrics.json``: ``{"before": {...}, "after": {...}, "teacher_rerank": {...}}``, each with the keys of
  ``md2pr eval`` (``ndcg@10``, ``mrr@10``, ``recall@100``, ``map@100``, ``n_queries``, ``corpus_size``, ...).
- ``run_info.json`` (or a :class:`RunInfo` / dict): teacher, student base, ``alpha``, ``beta``, temperatures,
  mining rounds (:class:`RoundInfo`) and the command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from md2pr_st.utils import atomic_path

logger = logging.getLogger(__name__)

_TEMPLATE_NAME = "md2pr_model_card_template.md"


def _template_path() -> Path:
    """The card template: ``model_cards/`` of a source checkout, else the copy installed as ``md2pr_st.model_cards``."""
    source = Path(__file__).resolve().parents[2] / "model_cards" / _TEMPLATE_NAME
    if source.is_file():
        return source
    import importlib.resources

    return Path(str(importlib.resources.files("md2pr_st.model_cards") / _TEMPLATE_NAME))


TEMPLATE_PATH = _template_path()
METRICS_FILE = "metrics.json"
RUN_INFO_FILE = "run_info.json"
PLOTS_DIR = "plots"
MD2PR_TAGS = ("md2pr", "dense-retrieval", "knowledge-distillation")
# metrics.json key -> model-index metric type (the Hub's naming, as in MTEB cards)
MODEL_INDEX_METRICS = {
    "ndcg@10": "ndcg_at_10",
    "mrr@10": "mrr_at_10",
    "recall@100": "recall_at_100",
    "map@100": "map_at_100",
}
RESULT_COLUMNS = ("ndcg@10", "mrr@10", "recall@100", "map@100", "n_queries", "corpus_size")
RESULT_ROWS = ("before", "after", "teacher_rerank")
HOST_START = "<!-- md2pr-card: sentence-transformers generated card starts here -->"
HOST_END = "<!-- md2pr-card: sentence-transformers generated card ends here -->"
PLACEHOLDER_MODEL_ID = "sentence_transformers_model_id"  # what the host card's usage snippet says without an id
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")  # user access tokens: hf_ + 34 letters/digits
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def redact_tokens(text: str, *tokens: str | None) -> str:
    """Replace Hugging Face tokens (``hf_...``, and any ``tokens`` given) in ``text`` by ``hf_***``.

    Example:
        >>> redact_tokens("md2pr train --hub_token hf_abcdefghijklmnopqrstuvwxyz12345678 --alpha 1")
        'md2pr train --hub_token hf_*** --alpha 1'
        >>> redact_tokens("pip install hf_transfer")
        'pip install hf_transfer'
    """
    for token in tokens:
        if token:
            text = text.replace(token, "hf_***")
    return _TOKEN_PATTERN.sub("hf_***", text)


@dataclasses.dataclass
class RoundInfo:
    """What the false-negative filter did in one mining round.

    Args:
        round: 1-based round number.
        rule: the filter rule (``dynamic``, ``margin``, ``relative``, ``absolute``; see
            :mod:`md2pr_st.false_negatives`).
        threshold: the absolute threshold theta_r, when one was used.
        margin: the margin m_r of the default rule theta_r(q) = t(q, d+) - m_r.
        relative_margin: r of the relative rule theta(q) = t(q, d+) - |t(q, d+)| * r.
        candidates_scored: mined candidates the teacher scored.
        flagged: candidates flagged as false negatives (removed from the negatives).
        filter_rate: ``flagged / candidates_scored`` (computed when not given).
        dev_ndcg_at_10: the student's dev nDCG@10 after the round.
    """

    round: int
    rule: str | None = None
    threshold: float | None = None
    margin: float | None = None
    relative_margin: float | None = None
    candidates_scored: int | None = None
    flagged: int | None = None
    filter_rate: float | None = None
    dev_ndcg_at_10: float | None = None

    _ALIASES = {
        "theta": "threshold",
        "candidates": "candidates_scored",
        "scored": "candidates_scored",
        "false_negatives": "flagged",
        "flagged_fraction": "filter_rate",  # FalseNegativeFilter's per-round statistics
        "dev_ndcg@10": "dev_ndcg_at_10",
        "ndcg@10": "dev_ndcg_at_10",
    }

    def __post_init__(self) -> None:
        if self.filter_rate is None and self.flagged is not None and self.candidates_scored:
            self.filter_rate = self.flagged / self.candidates_scored

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_round: int = 1) -> RoundInfo:
        """Build from a dict, e.g. one of :class:`md2pr_st.false_negatives.FalseNegativeFilter`'s round statistics
        (``flagged_fraction`` is the filter rate) plus ``dev_ndcg@10``; other keys are ignored.

        Example:
            >>> r = RoundInfo.from_dict({"round": 2, "rule": "dynamic", "margin": 1.5, "candidates_scored": 400,
            ...                          "flagged": 10, "flagged_fraction": 0.025, "gaps": {"count": 400}})
            >>> r.rule, r.margin, r.filter_rate
            ('dynamic', 1.5, 0.025)
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            key = cls._ALIASES.get(key, key)
            if key in known:
                values[key] = value
            else:
                logger.debug("RoundInfo: ignoring unknown key %r", key)
        values.setdefault("round", default_round)
        return cls(**values)


@dataclasses.dataclass
class RunInfo:
    """How an MD2PR model was trained: what the card reports next to the metrics.

    Args:
        teacher: the cross-encoder (Hub id or local folder).
        student_base: the dual-encoder the student started from (Hub id or local folder).
        alpha: weight of the sentence-level distillation loss.
        beta: weight of the word-level distillation loss.
        temperatures: name -> value, e.g. ``{"teacher_temperature": 1.0, "student_temperature": 1.0,
            "word_temperature": 0.05}``.
        rounds: one :class:`RoundInfo` (or dict) per mining round.
        command: the exact command line (a string, or a list of arguments).
        dataset: the training/evaluation data, e.g. ``"TREC RAG 2024"``.
        dataset_id: the ``type`` of the dataset in the ``model-index`` (a Hub dataset id when there is one).
        split: the evaluation split of ``metrics.json``.
        datasets: the front matter's ``datasets`` list (defaults to ``[dataset_id]``).
        license: the model's licence id for the Hub (``apache-2.0`` as all-MiniLM-L6-v2; the data terms are in
            the limitations).
        language: language code.
        model_name: the card's title.
        settings: other settings to list (name -> value), e.g. batch size, learning rate, epochs.
    """

    teacher: str | None = None
    student_base: str | None = None
    alpha: float | None = None
    beta: float | None = None
    temperatures: dict[str, float] = dataclasses.field(default_factory=dict)
    rounds: list[RoundInfo] = dataclasses.field(default_factory=list)
    command: str | list[str] | None = None
    dataset: str = "TREC RAG 2024"
    dataset_id: str | None = None
    split: str = "test"
    datasets: list[str] | None = None
    license: str = "apache-2.0"
    language: str = "en"
    model_name: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rounds = [
            r if isinstance(r, RoundInfo) else RoundInfo.from_dict(r, default_round=i + 1)
            for i, r in enumerate(self.rounds)
        ]
        if self.dataset_id is None:
            self.dataset_id = re.sub(r"[^a-z0-9]+", "-", self.dataset.lower()).strip("-") or "unknown"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        """Build from a dict (e.g. ``run_info.json``); unknown keys go to ``settings``.

        Example:
            >>> info = RunInfo.from_dict({"teacher": "ce", "alpha": 1.0, "rounds": [{"flagged": 5, "candidates": 50}],
            ...                           "learning_rate": 2e-5})
            >>> info.rounds[0].filter_rate, info.settings
            (0.1, {'learning_rate': 2e-05})
        """
        known = {f.name for f in dataclasses.fields(cls)}
        aliases = {"student": "student_base", "base_model": "student_base"}
        values: dict[str, Any] = {}
        settings = dict(data.get("settings") or {})
        for key, value in data.items():
            key = aliases.get(key, key)
            if key == "settings":
                continue
            if key in known:
                values[key] = value
            else:
                settings[key] = value
        return cls(**values, settings=settings)


def _load_json(value: Mapping[str, Any] | str | Path | None, what: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} file {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"The {what} file {path} is not valid JSON: {exc}") from exc


def _as_run_info(run_info: RunInfo | Mapping[str, Any] | str | Path | None) -> RunInfo:
    if isinstance(run_info, RunInfo):
        return run_info
    data = _load_json(run_info, "run info")
    return RunInfo() if data is None else RunInfo.from_dict(data)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split a card into its YAML front matter (parsed) and its body.

    Example:
        >>> split_front_matter("---\\ntags:\\n- a\\n---\\n\\n# Title\\n")
        ({'tags': ['a']}, '# Title\\n')
    """
    match = re.match(r"^---\s*\n(.*?\n)?---\s*\n", text, flags=re.DOTALL)
    if not match:
        return {}, text
    data = yaml.safe_load(match.group(1) or "") or {}
    if not isinstance(data, dict):
        raise ValueError(f"The card's front matter is not a YAML mapping: {str(data)[:80]!r}")
    return data, text[match.end() :].lstrip("\n")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _round_rule(r: RoundInfo) -> str:
    """``"dynamic, margin 1.5000"``: the rule and the value that set the round's threshold."""
    if r.threshold is not None:
        value = f"threshold {_fmt(r.threshold)}"
    elif r.margin is not None:
        value = f"margin {_fmt(r.margin)}"
    elif r.relative_margin is not None:
        value = f"relative margin {_fmt(r.relative_margin)}"
    else:
        value = ""
    return ", ".join(part for part in (r.rule, value) if part) or "-"


def _hub_id(name: str | None) -> str | None:
    """``name`` when it looks like a Hub model id (``org/name``) and is not a local folder, else None.

    The embedded all-MiniLM-L6-v2 (a path inside site-packages) maps to its Hub id.
    """
    if not name:
        return None
    from md2pr_st.models import DEFAULT_STUDENT_ID

    try:
        from md2pr_st.models import embedded_student_path

        if Path(name).resolve() == embedded_student_path().resolve():
            return DEFAULT_STUDENT_ID
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        pass
    if name in ("minilm", "all-MiniLM-L6-v2"):
        return DEFAULT_STUDENT_ID
    if _HUB_ID_PATTERN.match(name) and not Path(name).exists():
        return name
    return None


def _display_model(name: str | None) -> str:
    if not name:
        return "not recorded"
    hub_id = _hub_id(name)
    if hub_id:
        return f"[{hub_id}](https://huggingface.co/{hub_id})"
    path = Path(name)
    shown = f"{path.parent.name}/{path.name}" if path.parent.name else path.name  # e.g. teacher/model
    return f"`{shown}` (a local folder)"


def build_model_index(
    metrics_after: Mapping[str, Any], model_name: str, dataset: str, dataset_id: str, split: str
) -> list[dict[str, Any]]:
    """The Hub ``model-index`` for the retrieval results of ``metrics_after`` (values kept exactly).

    Example:
        >>> index = build_model_index({"ndcg@10": 0.5, "mrr@10": 0.25, "n_queries": 3}, "m", "TREC RAG 2024",
        ...                           "trec-rag-2024", "test")
        >>> [(m["type"], m["value"]) for m in index[0]["results"][0]["metrics"]]
        [('ndcg_at_10', 0.5), ('mrr_at_10', 0.25)]
        >>> index[0]["results"][0]["dataset"]
        {'name': 'TREC RAG 2024', 'type': 'trec-rag-2024', 'split': 'test'}
    """
    from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index

    results = [
        EvalResult(
            task_type="retrieval",
            task_name="Retrieval",
            dataset_type=dataset_id,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=key.replace("ndcg", "nDCG")
            .replace("mrr", "MRR")
            .replace("recall", "Recall")
            .replace("map", "MAP"),
            metric_value=float(metrics_after[key]),
        )
        for key, metric_type in MODEL_INDEX_METRICS.items()
        if metrics_after.get(key) is not None
    ]
    return eval_results_to_model_index(model_name, results) if results else []


def replace_usage_model_id(text: str, model_id: str) -> str:
    """Point the ``SentenceTransformer("...")`` calls inside ```python blocks at ``model_id``.

    Example:
        >>> replace_usage_model_id('```python\\nm = SentenceTransformer("sentence_transformers_model_id")\\n```', "org/x")
        '```python\\nm = SentenceTransformer("org/x")\\n```'
    """

    def fix_block(match: re.Match) -> str:
        return re.sub(r'SentenceTransformer\("[^"\n]*"\)', f'SentenceTransformer("{model_id}")', match.group(0))

    return re.sub(r"```python\n.*?```", fix_block, text, flags=re.DOTALL)


# The host's usage snippet, with fixed texts instead of the training rows the host trainer picks for it.
NEUTRAL_USAGE_SNIPPET = f"""```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{PLACEHOLDER_MODEL_ID}")
queries = ["how do snakes move?"]
documents = [
    "Snakes move by contracting muscles along their body.",
    "Paris is the capital of France.",
]
query_embeddings = model.encode_query(queries)
document_embeddings = model.encode_document(documents)
print(model.similarity(query_embeddings, document_embeddings).shape)
# [1, 2]
```"""
_SAMPLES_TABLE = re.compile(r"^[ \t]*\* Samples:[ \t]*\n(?:[ \t]*\|.*(?:\n|$))*", flags=re.MULTILINE)
_PYTHON_BLOCK = re.compile(r"```python\n.*?```", flags=re.DOTALL)


def remove_dataset_texts(card_data: Any) -> Any:
    """Clear the dataset texts that the host's trainer put into ``card_data`` (a model's ``model_card_data``).

    Call it after building a ``SentenceTransformerTrainer`` / ``CrossEncoderTrainer`` (its model-card callback fills
    the card data when the trainer is built). It drops the widget examples and the usage snippet's sentences (rows
    of the train or eval dataset), and the first rows of each dataset ("Samples" tables); the dataset sizes, column
    names, token statistics and the loss stay. ``generate_widget_examples=False`` alone is not enough: in
    sentence-transformers 6.2 it only skips computing similarities, the examples are still taken from the data.

    Returns:
        ``card_data``, changed in place.
    """
    card_data.generate_widget_examples = False
    card_data.widget = []
    card_data.usage_examples = None
    if hasattr(card_data, "usage_examples_display"):
        card_data.usage_examples_display = None
    if hasattr(card_data, "label_example_list"):
        card_data.label_example_list = []
    for info in [*(card_data.train_datasets or []), *(card_data.eval_datasets or [])]:
        for key in ("examples", "examples_table", "_example_columns"):
            info.pop(key, None)
    return card_data


def strip_dataset_texts(front_matter: Mapping[str, Any], body: str) -> tuple[dict[str, Any], str]:
    """Remove dataset texts from a host-generated card: ``widget`` examples, "Samples" tables of dataset rows, and
    the usage snippets' sentences (replaced by :data:`NEUTRAL_USAGE_SNIPPET`). Everything else is kept.

    Example:
        >>> front, body = strip_dataset_texts(
        ...     {"tags": ["a"], "widget": [{"source_sentence": "q", "sentences": ["secret passage"]}]},
        ...     "* Columns: <code>query</code>\\n* Samples:\\n  | query |\\n  |:--|\\n"
        ...     "  | <code>secret</code> |\\n* Loss: x\\n",
        ... )
        >>> front, body
        ({'tags': ['a']}, '* Columns: <code>query</code>\\n* Loss: x\\n')
    """
    front = {key: value for key, value in front_matter.items() if key != "widget"}
    body = _SAMPLES_TABLE.sub("", body)
    body = _PYTHON_BLOCK.sub(lambda m: NEUTRAL_USAGE_SNIPPET if "model.encode" in m.group(0) else m.group(0), body)
    return front, body


def _host_card(model_dir: Path) -> tuple[dict[str, Any], str]:
    """Front matter and body of the host library's card in ``model_dir`` (from an earlier MD2PR card, the
    host part it kept). Without a README.md, the host card is generated by loading the model."""
    readme = model_dir / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
    else:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.model_card import generate_model_card

        logger.info("%s has no README.md: generating the sentence-transformers card", model_dir)
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        text = generate_model_card(model)
    front_matter, body = split_front_matter(text)
    if HOST_START in body and HOST_END in body:
        body = body.split(HOST_START, 1)[1].split(HOST_END, 1)[0].strip("\n") + "\n"
    else:
        # The host card's title becomes a section heading under the MD2PR card's title (outside code blocks).
        lines, in_code = body.splitlines(), False
        for i, line in enumerate(lines):
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("# "):
                lines[i] = "## Sentence Transformers details: " + line[2:].strip()
                break
        body = "\n".join(lines) + "\n"
    return front_matter, body


def _plot_entries(model_dir: Path, plots: Iterable[str | Path]) -> list[dict[str, str]]:
    """Copy ``plots`` into ``model_dir/plots`` (links then work locally and on the Hub) and list them."""
    entries, seen = [], set()
    for plot in plots:
        plot = Path(plot)
        if not plot.is_file():
            raise FileNotFoundError(f"Plot {plot} does not exist.")
        if plot.suffix.lower() not in (".png", ".jpg", ".jpeg", ".svg"):
            raise ValueError(f"Plot {plot} is not an image (.png, .jpg, .svg).")
        target = model_dir / PLOTS_DIR / plot.name
        if plot.name in seen:
            continue
        seen.add(plot.name)
        if plot.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # may be a hard link to another folder's file: never write through it
            shutil.copyfile(plot, target)
        entries.append({"title": plot.stem.replace("_", " ").replace("-", " "), "path": f"{PLOTS_DIR}/{plot.name}"})
    return entries


def render_model_card(
    host_front_matter: Mapping[str, Any],
    host_body: str,
    metrics: Mapping[str, Any] | None,
    run_info: RunInfo,
    *,
    plots: Sequence[Mapping[str, str]] = (),
    model_id: str | None = None,
    template_path: str | Path | None = None,
) -> str:
    """Render the MD2PR card text (front matter + body) from the host card's parts; see :func:`write_model_card`."""
    import jinja2

    from md2pr_st.losses._shared import MD2PR_CITATION

    template_path = Path(template_path or TEMPLATE_PATH)
    if not template_path.is_file():
        raise FileNotFoundError(
            f"The model card template {template_path} is missing. It ships in model_cards/ (installed as "
            "md2pr_st.model_cards); reinstall md2pr-st or pass template_path=."
        )
    model_id = model_id or PLACEHOLDER_MODEL_ID
    student_hub_id = _hub_id(run_info.student_base)
    model_name = (
        run_info.model_name
        or (model_id.split("/")[-1] if model_id != PLACEHOLDER_MODEL_ID else None)
        or f"MD2PR {Path(run_info.student_base).name if run_info.student_base else 'dense retriever'}"
    )

    # Front matter: the host's metadata (base model, ...) with MD2PR's on top; no dataset texts from the host card.
    host_front_matter, host_body = strip_dataset_texts(host_front_matter, host_body)
    front = dict(host_front_matter)
    tags = list(front.get("tags") or [])
    tags += [t for t in ("sentence-transformers", "sentence-similarity", *MD2PR_TAGS) if t not in tags]
    datasets = list(front.get("datasets") or [])
    datasets += [d for d in (run_info.datasets or [run_info.dataset_id]) if d not in datasets]
    ours: dict[str, Any] = {
        "language": run_info.language,
        "license": run_info.license,
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": tags,
    }
    if student_hub_id or front.get("base_model"):
        ours["base_model"] = student_hub_id or front["base_model"]
    ours["datasets"] = datasets
    after = (metrics or {}).get("after") or {}
    model_index = build_model_index(after, model_name, run_info.dataset, run_info.dataset_id, run_info.split)
    if model_index:
        ours["metrics"] = [MODEL_INDEX_METRICS[k] for k in MODEL_INDEX_METRICS if after.get(k) is not None]
        ours["model-index"] = model_index
    for key in list(front):
        if key in ours:
            front.pop(key)
    front = {**ours, **front}
    front_matter = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000).strip()

    results_rows = []
    for row in RESULT_ROWS:
        values = (metrics or {}).get(row)
        if values:
            results_rows.append({"label": f"`{row}`", "cells": [_fmt(values.get(c)) for c in RESULT_COLUMNS]})
    split_text = f"{run_info.dataset}, split `{run_info.split}`"
    n_corpus = after.get("corpus_size")
    results_caption = f"{split_text}" + (
        f", exact search over the whole corpus of {n_corpus:,} passages." if isinstance(n_corpus, int) else "."
    )
    rounds = [
        {
            "round": r.round,
            "threshold": _round_rule(r),
            "candidates_scored": _fmt(r.candidates_scored),
            "flagged": _fmt(r.flagged),
            "filter_rate": "-" if r.filter_rate is None else f"{100 * r.filter_rate:.2f}%",
            "dev_ndcg_at_10": _fmt(r.dev_ndcg_at_10),
        }
        for r in run_info.rounds
    ]
    command = run_info.command
    if isinstance(command, (list, tuple)):
        command = shlex.join(str(c) for c in command)
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_path.parent)),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    ).get_template(template_path.name)
    card = template.render(
        front_matter=front_matter,
        model_name=model_name,
        model_id=model_id,
        teacher=_display_model(run_info.teacher),
        student_base=_display_model(run_info.student_base),
        dataset_label=split_text.replace(", split", ", evaluated on split"),
        alpha=_fmt(run_info.alpha, 6) if run_info.alpha is not None else "not recorded",
        beta=_fmt(run_info.beta, 6) if run_info.beta is not None else "not recorded",
        sentence_level_teacher=run_info.settings.get("sentence_level_teacher"),
        word_level_off=run_info.beta == 0,
        temperatures=[(k, v) for k, v in run_info.temperatures.items()],
        settings=[(k, v) for k, v in run_info.settings.items()],
        rounds=rounds,
        results_rows=results_rows,
        result_columns=list(RESULT_COLUMNS),
        results_caption=results_caption,
        plots=list(plots),
        command=command or "# not recorded",
        language=run_info.language,
        citation=MD2PR_CITATION.strip(),
        host_card=f"{HOST_START}\n\n{replace_usage_model_id(host_body, model_id).strip()}\n\n{HOST_END}",
    )
    return redact_tokens(card)


def write_model_card(
    model_dir: str | Path,
    metrics: Mapping[str, Any] | str | Path | None = None,
    run_info: RunInfo | Mapping[str, Any] | str | Path | None = None,
    *,
    plots: Iterable[str | Path] = (),
    model_id: str | None = None,
    template_path: str | Path | None = None,
) -> Path:
    """Write the MD2PR model card to ``model_dir/README.md``, built on the host library's card found there.

    The host card (architecture, usage, training details, losses, versions) is kept below the MD2PR sections,
    without dataset texts (:func:`strip_dataset_texts`); its metadata is merged into the front matter. Running it
    again (e.g. with the final ``model_id`` at push time) replaces the MD2PR part and keeps the host part once. The
    file is written atomically.

    Args:
        model_dir: a saved SentenceTransformer folder (``README.md`` is generated when missing).
        metrics: ``metrics.json`` contents or path: ``{"before": {...}, "after": {...}, "teacher_rerank": {...}}``.
            The ``model-index`` takes ``after``'s ndcg@10, mrr@10, recall@100 and map@100, unrounded.
        run_info: a :class:`RunInfo`, a dict or a ``run_info.json`` path.
        plots: image files; they are copied to ``model_dir/plots/`` and linked from the card.
        model_id: the Hub id (``org/name``) used in the usage snippets.
        template_path: another Jinja2 template (default ``model_cards/md2pr_model_card_template.md``).

    Returns:
        The path of the card.

    Raises:
        FileNotFoundError: ``model_dir``, a metrics/run-info file, a plot or the template is missing.
        ValueError: a metrics/run-info file is not JSON, or the existing front matter is not a YAML mapping.

    Example:
        >>> import tempfile, yaml
        >>> from md2pr_st.hub.model_card import write_model_card, split_front_matter
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "README.md").write_text("---\\ntags:\\n- sentence-transformers\\n---\\n# SentenceTransformer\\n")
        >>> card = write_model_card(folder, {"after": {"ndcg@10": 0.41, "mrr@10": 0.5}},
        ...                         {"teacher": "cross-encoder/ms-marco-MiniLM-L6-v2", "alpha": 1.0}, model_id="org/md2pr")
        >>> meta, body = split_front_matter(card.read_text())
        >>> meta["model-index"][0]["results"][0]["metrics"][0]["value"], "md2pr" in meta["tags"]
        (0.41, True)
        >>> 'SentenceTransformer("org/md2pr")' in body and "Sentence Transformers details: SentenceTransformer" in body
        True
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder {model_dir} does not exist.")
    metrics_data = _load_json(metrics, "metrics")
    info = _as_run_info(run_info)
    host_front, host_body = _host_card(model_dir)
    plot_entries = _plot_entries(model_dir, plots)
    text = render_model_card(
        host_front, host_body, metrics_data, info, plots=plot_entries, model_id=model_id, template_path=template_path
    )
    target = model_dir / "README.md"
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
