"""What a model card reports about an MD2PR run: :class:`RunInfo` (``run_info.json``) and :class:`RoundInfo`.

Also the small rules that keep a card truthful: model names shown as Hub links or as the last two parts of a local
path (never an absolute path), the data's name and licence, and tokens redacted from the recorded command.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from md2pr_st.models import DEFAULT_STUDENT_ID, embedded_student_path

logger = logging.getLogger(__name__)

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")  # user access tokens: hf_ + 34 letters/digits
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Names of the TREC RAG 2024 data (md2pr_st.data): its passages are MS MARCO v2.1 segments.
RAG24_NAMES = ("rag24", "trec rag 2024", "trec-rag-2024")
RAG24_TITLE = "TREC RAG 2024"
# Settings that describe the machine, not the training: left out of a card.
MACHINE_SETTINGS = frozenset({"output_dir", "cache_dir", "data_cache_dir", "sdist", "device", "index_dir"})


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


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it is a Hub model id (``org/name``, not an existing local folder), else None.

    The embedded all-MiniLM-L6-v2 (a folder inside site-packages) and its aliases map to its Hub id.

    Example:
        >>> hub_model_id("cross-encoder/ms-marco-MiniLM-L6-v2"), hub_model_id("/tmp"), hub_model_id("minilm")
        ('cross-encoder/ms-marco-MiniLM-L6-v2', None, 'sentence-transformers/all-MiniLM-L6-v2')
    """
    if not name:
        return None
    if name in ("minilm", "all-MiniLM-L6-v2"):
        return DEFAULT_STUDENT_ID
    try:
        if Path(name).resolve() == embedded_student_path().resolve():
            return DEFAULT_STUDENT_ID
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        pass
    if _HUB_ID_PATTERN.match(name) and not Path(name).exists():
        return name
    return None


def short_path(value: str | Path) -> str:
    """The last two parts of a local path: enough to recognise it, nothing about the machine.

    Example:
        >>> short_path("/home/alice/runs/demo/teacher/model")
        'teacher/model'
    """
    path = Path(value)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def display_model(name: str | None) -> str | None:
    """A Markdown link for a Hub id, ``` `teacher/model` (a local folder)``` for a path; None when unknown.

    Example:
        >>> display_model("/home/alice/runs/demo/teacher/model"), display_model(None)
        ('`teacher/model` (a local folder)', None)
        >>> display_model("BAAI/bge-reranker-base")
        '[BAAI/bge-reranker-base](https://huggingface.co/BAAI/bge-reranker-base)'
    """
    if not name:
        return None
    hub_id = hub_model_id(name)
    if hub_id:
        return f"[{hub_id}](https://huggingface.co/{hub_id})"
    return f"`{short_path(name)}` (a local folder)"


def display_value(value: Any) -> str:
    """A setting's value for a card: absolute paths shortened, floats as given.

    Example:
        >>> display_value("/data/beir/scifact"), display_value(2e-05), display_value(None)
        ('`beir/scifact`', '2e-05', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, str) and os.path.isabs(value):
        return f"`{short_path(value)}`"
    if isinstance(value, (list, tuple)):
        return ", ".join(display_value(v) for v in value) or "-"
    return str(value)


def elide_local_paths(value: Any) -> Any:
    """``value`` (nested dicts and lists too) with every absolute path shortened to ``.../`` and its last two
    parts: what is saved next to a card (and pushed with it) says nothing about the machine.

    Example:
        >>> elide_local_paths({"teacher": "/home/alice/runs/demo/teacher/model", "rounds": [1, "/tmp"]})
        {'teacher': '.../teacher/model', 'rounds': [1, '.../tmp']}
    """
    if isinstance(value, str) and os.path.isabs(value):
        return f".../{short_path(value)}"
    if isinstance(value, dict):
        return {key: elide_local_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [elide_local_paths(item) for item in value]
    return value


def check_dataset_ids(ids: Iterable[str]) -> list[str]:
    """Hub dataset ids given by the user, checked: the card's ``datasets:`` lists only these.

    Raises:
        ValueError: an id that is not of the Hub's form, or that is a local folder.

    Example:
        >>> check_dataset_ids(["BeIR/scifact"])
        ['BeIR/scifact']
    """
    checked = []
    for dataset_id in ids:
        if Path(dataset_id).exists():
            raise ValueError(
                f"{dataset_id!r} is a local folder, not a Hub dataset id; the card's `datasets:` links to the Hub, "
                "so give the id of the dataset there (e.g. BeIR/scifact), or none."
            )
        try:
            validate_repo_id(dataset_id)
        except HFValidationError as exc:
            raise ValueError(f"{dataset_id!r} is not a Hub dataset id (e.g. BeIR/scifact): {exc}") from None
        checked.append(dataset_id)
    return list(dict.fromkeys(checked))


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
        values.setdefault("round", default_round)
        return cls(**values)

    def rule_text(self) -> str:
        """The rule and the value that set the round's threshold.

        Example:
            >>> RoundInfo(round=1, rule="dynamic", margin=1.5).rule_text()
            'dynamic, margin 1.5000'
        """
        if self.threshold is not None:
            value = f"threshold {self.threshold:.4f}"
        elif self.margin is not None:
            value = f"margin {self.margin:.4f}"
        elif self.relative_margin is not None:
            value = f"relative margin {self.relative_margin:.4f}"
        else:
            value = ""
        return ", ".join(part for part in (self.rule, value) if part) or "-"


@dataclasses.dataclass
class RunInfo:
    """How an MD2PR model was trained: what the card reports next to the metrics.

    Args:
        teacher: the cross-encoder (Hub id or local folder).
        student_base: the dual-encoder the student started from (Hub id or local folder).
        alpha: weight of the sentence-level distillation loss.
        beta: weight of the word-level distillation loss.
        temperatures: name -> value, e.g. ``{"teacher": 1.0, "student": 0.05, "word": 0.05}``.
        rounds: one :class:`RoundInfo` (or dict) per mining round.
        command: the exact command line (a string, or a list of arguments); tokens in it are redacted.
        dataset: the data's name (``rag24`` or a BEIR folder's name); None when not recorded.
        split: the evaluation split of ``metrics.json``.
        datasets: Hub dataset ids of the data, given by the user: the only ids the card's ``datasets:`` lists.
        license: the model's licence id for the Hub (the data's terms are in the limitations).
        language: language code.
        model_name: the card's title.
        sentence_level_teacher: what gave the sentence level its scores when not the cross-encoder (e.g. qrels).
        settings: other settings (name -> value), e.g. batch size, learning rate, epochs.
        extra: other recorded values that are not settings (timings, the teacher's report).
    """

    teacher: str | None = None
    student_base: str | None = None
    alpha: float | None = None
    beta: float | None = None
    temperatures: dict[str, float] = dataclasses.field(default_factory=dict)
    rounds: list[RoundInfo] = dataclasses.field(default_factory=list)
    command: str | list[str] | None = None
    dataset: str | None = None
    split: str = "test"
    datasets: list[str] = dataclasses.field(default_factory=list)
    license: str = "apache-2.0"
    language: str = "en"
    model_name: str | None = None
    sentence_level_teacher: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rounds = [
            r if isinstance(r, RoundInfo) else RoundInfo.from_dict(r, default_round=i + 1)
            for i, r in enumerate(self.rounds)
        ]
        self.datasets = check_dataset_ids(self.datasets or [])
        if isinstance(self.command, (list, tuple)):
            self.command = shlex.join(str(c) for c in self.command)
        if self.command:
            self.command = redact_tokens(self.command)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        """Build from a dict (e.g. ``run_info.json``): other plain values go to ``settings``, the rest to ``extra``.

        Example:
            >>> info = RunInfo.from_dict({"teacher": "ce", "alpha": 1.0, "rounds": [{"flagged": 5, "candidates": 50}],
            ...                           "learning_rate": 2e-5, "timings": {"teacher": 3.0}})
            >>> info.rounds[0].filter_rate, info.settings, info.extra
            (0.1, {'learning_rate': 2e-05}, {'timings': {'teacher': 3.0}})
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"settings", "extra"}
        aliases = {"student": "student_base", "base_model": "student_base"}
        values: dict[str, Any] = {}
        settings, extra = dict(data.get("settings") or {}), dict(data.get("extra") or {})
        for key, value in data.items():
            key = aliases.get(key, key)
            if key in ("settings", "extra"):
                continue
            if key in known:
                values[key] = value
            elif isinstance(value, (dict, list)):
                extra[key] = value
            else:
                settings[key] = value
        return cls(**values, settings=settings, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back.

        Example:
            >>> RunInfo.from_dict(RunInfo(alpha=2.0, rounds=[{"flagged": 1}]).to_dict()).rounds[0].flagged
            1
        """
        return dataclasses.asdict(self)

    @property
    def is_rag24(self) -> bool:
        """Whether the data is TREC RAG 2024 (MS MARCO v2.1 passages, whose terms the card must state)."""
        name = (self.dataset or "").lower()
        return any(name == n or name.startswith(n + "-") for n in RAG24_NAMES)

    @property
    def dataset_title(self) -> str | None:
        """The data's name for a reader: ``TREC RAG 2024``, a BEIR folder's name, or None when not recorded.

        Example:
            >>> RunInfo(dataset="rag24").dataset_title, RunInfo(dataset="scifact").dataset_title, RunInfo().dataset_title
            ('TREC RAG 2024', 'scifact', None)
        """
        if self.is_rag24:
            return RAG24_TITLE
        return short_path(self.dataset) if self.dataset and os.path.isabs(self.dataset) else self.dataset

    def settings_rows(self, shown: Iterable[str] = ()) -> list[tuple[str, str]]:
        """``(name, value)`` rows of the settings not already ``shown`` elsewhere in the card and not about the
        machine (output and cache folders, device), each name once, local paths shortened.

        Example:
            >>> RunInfo(alpha=1.0, settings={"alpha": 1.0, "output_dir": "/x/y", "batch_size": 16}).settings_rows(
            ...     shown={"alpha"})
            [('batch_size', '16')]
        """
        hidden = set(shown) | MACHINE_SETTINGS
        rows: dict[str, str] = {}
        for key, value in self.settings.items():
            if key not in hidden and key not in rows:
                rows[key] = display_value(value)
        return list(rows.items())
