"""The MD2PR model card data: the host's ``SentenceTransformerModelCardData`` with MD2PR's template and fields.

The host renders the card (``model.save`` calls its ``generate_model_card``) from a card data object that the
trainer fills: datasets, loss, hyperparameters, logs. :class:`MD2PRModelCardData` adds what an MD2PR model needs
on top (the run's provenance, its metrics and plots) and keeps what the host would take from the data out: no
widget examples, no usage sentences, no "Samples" rows (RAG24's passages are MS MARCO texts under non-commercial
terms). Next to the card it writes ``md2pr_card_data.json``, its own state without any data text, so that the card
can be rendered again later, e.g. with the metrics of a finished run or with the repo id at push time
(:meth:`MD2PRModelCardData.from_folder`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import shutil
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from md2pr_st import _host
from md2pr_st._version import __version__
from md2pr_st.citation import MD2PR_CITATION
from md2pr_st.hub.model_index import MODEL_INDEX_METRICS, build_model_index
from md2pr_st.hub.run_info import (
    RunInfo,
    display_model,
    display_value,
    elide_local_paths,
    hub_model_id,
    short_path,
)
from md2pr_st.utils import atomic_path

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "md2pr_model_card_template.md"
CARD_DATA_FILE = "md2pr_card_data.json"
PLOTS_DIR = "plots"
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
MD2PR_TAGS = ("md2pr", "dense-retrieval", "knowledge-distillation")
NOT_RECORDED = "not recorded"
RESULT_COLUMNS = ("ndcg@10", "mrr@10", "recall@100", "map@100", "n_queries", "corpus_size")
RESULT_ROWS = ("before", "after", "teacher_rerank")
# What the trainer recorded (card data fields), and what the host computes from parts that are not kept.
_KEPT_FIELDS = (
    "train_datasets",
    "eval_datasets",
    "all_hyperparameters",
    "non_default_hyperparameters",
    "training_logs",
    "best_model_step",
    "citations",
    "tags",
    "datasets",
    "base_model",
    "base_model_revision",
)
_KEPT_RENDERED = ("training_time", "evaluation_time", "total_time", "co2_eq_emissions", "eval_metrics")
_EXAMPLE_KEYS = ("examples", "examples_table", "_example_columns")  # dataset rows the host keeps per dataset


def _template_path() -> Path:
    """The card template: ``model_cards/`` of a source checkout, else the copy installed as ``md2pr_st.model_cards``."""
    source = Path(__file__).resolve().parents[2] / "model_cards" / TEMPLATE_NAME
    if source.is_file():
        return source
    return Path(str(importlib.resources.files("md2pr_st.model_cards") / TEMPLATE_NAME))


TEMPLATE_PATH = _template_path()


def plot_name(path: str | Path) -> str:
    """The plot's file name in the model folder's ``plots/``: a round's plot keeps its round in the name.

    Example:
        >>> plot_name("runs/demo/round_2/filter_gaps.png"), plot_name("runs/demo/loss_parts.png")
        ('round_2_filter_gaps.png', 'loss_parts.png')
    """
    path = Path(path)
    return f"{path.parent.name}_{path.name}" if path.parent.name.startswith("round_") else path.name


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _json_ready(value: Any) -> Any:
    """``value`` as plain JSON types (enums, paths and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def _host_tags() -> list[str]:
    return SentenceTransformerModelCardData.__dataclass_fields__["tags"].default_factory()


@dataclasses.dataclass
class MD2PRModelCardData(SentenceTransformerModelCardData):
    """Card data of an MD2PR student: the host's card data with MD2PR's template, provenance, results and plots.

    Give it to a model (``SentenceTransformer(..., model_card_data=...)``, or :func:`use_md2pr_card_data` for a
    loaded one) before training: the host's trainer fills it as usual, and every ``model.save(path)`` writes the
    MD2PR card, copies the plots to ``path/plots/`` (the card links them relatively, so they work locally and on
    the Hub) and writes ``md2pr_card_data.json``. Nothing of the training data's text is taken.

    Args:
        run_info: how the model was trained (:class:`~md2pr_st.hub.RunInfo`, or a ``run_info.json`` dict).
        metrics: ``metrics.json``: ``{"before": {...}, "after": {...}, "teacher_rerank": {...}}``; the
            ``model-index`` takes ``after``'s ndcg@10, mrr@10, recall@100 and map@100, unrounded.
        plots: image files to embed (copied next to the card).
        Other arguments: as ``SentenceTransformerModelCardData`` (``model_id``, ``language``, ``license``, ...).

    Example:
        >>> from md2pr_st.hub import MD2PRModelCardData
        >>> card_data = MD2PRModelCardData(run_info={"teacher": "cross-encoder/ms-marco-MiniLM-L6-v2", "alpha": 1.0},
        ...                                metrics={"after": {"ndcg@10": 0.41}}, local_files_only=True)
        >>> card_data.run_info.teacher, "md2pr" in card_data.tags
        ('cross-encoder/ms-marco-MiniLM-L6-v2', True)
        >>> model = SentenceTransformer("path/to/model", model_card_data=card_data)  # doctest: +SKIP
        >>> model.save("path/to/copy")  # doctest: +SKIP
    """

    run_info: RunInfo | None = None
    metrics: dict[str, Any] | None = None
    plots: list[Path] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=lambda: [*_host_tags(), *MD2PR_TAGS])

    loss_configs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, init=False)
    kept_rendered: dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False)
    template_path: Path = dataclasses.field(default=TEMPLATE_PATH, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ir_model = True  # a retriever: the usage snippet encodes a query and documents
        self.set_run(run_info=self.run_info, metrics=self.metrics, plots=self.plots)

    def set_run(
        self,
        run_info: RunInfo | Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        plots: list[str | Path] | tuple = (),
    ) -> None:
        """Set the run's provenance, metrics and plots (each only when given)."""
        if run_info is not None:
            self.run_info = run_info if isinstance(run_info, RunInfo) else RunInfo.from_dict(run_info)
        if metrics is not None:
            self.metrics = dict(metrics)
        if plots:
            checked = []
            for plot in map(Path, plots):
                if not plot.is_file():
                    raise FileNotFoundError(f"Plot {plot} does not exist.")
                if plot.suffix.lower() not in PLOT_SUFFIXES:
                    raise ValueError(f"Plot {plot} is not an image ({', '.join(PLOT_SUFFIXES)}).")
                checked.append(plot.absolute())  # not resolved: a Hub cache's links point at hash-named blobs
            self.plots = list({plot_name(p): p for p in checked}.values())  # one plot per name

    @classmethod
    def from_folder(cls, model_dir: str | Path, **kwargs: Any) -> MD2PRModelCardData:
        """The card data saved with a model (``md2pr_card_data.json``); a new one when the folder has none.

        Raises:
            ValueError: the file is not valid JSON.

        Example:
            >>> import tempfile
            >>> card_data = MD2PRModelCardData.from_folder(tempfile.mkdtemp(), model_id="org/md2pr")
            >>> card_data.model_id, card_data.run_info, card_data.local_files_only
            ('org/md2pr', None, True)
        """
        model_dir = Path(model_dir)
        card_data = cls(**{"local_files_only": True, **kwargs})
        path = model_dir / CARD_DATA_FILE
        if not path.is_file():
            return card_data
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        for name, value in (state.get("fields") or {}).items():
            if name in _KEPT_FIELDS and value is not None:
                setattr(card_data, name, value)
        card_data.add_tags([*_host_tags(), *MD2PR_TAGS])
        card_data.loss_configs = state.get("loss_configs") or {}
        card_data.kept_rendered = {k: v for k, v in (state.get("rendered") or {}).items() if k in _KEPT_RENDERED}
        if state.get("version"):
            card_data.version = state["version"]  # the versions that trained the model
        # Only plots inside the folder's plots/: the state file must not point the next save at other files.
        plots = [model_dir / PLOTS_DIR / Path(name).name for name in state.get("plots") or []]
        card_data.set_run(state.get("run_info"), state.get("metrics"), [p for p in plots if p.is_file()])
        return card_data

    def register_model(self, model: Any) -> None:
        super().register_model(model)
        # The host saves a loaded model's README again as it was, unless the model was trained since; this card is
        # rendered from this card data at every save instead, so that its plots are copied along with it.
        _host.forget_loaded_card(model)

    # The host takes these from the training data; an MD2PR card never quotes it.
    def set_widget_examples(self, dataset: Any) -> None:
        """Never: widget examples would be rows of the training data."""

    def set_label_examples(self, dataset: Any) -> None:
        """Never: label examples would be rows of the training data."""

    def compute_dataset_metrics(self, dataset: Any, dataset_info: dict[str, Any], loss: Any, *args, **kwargs):
        """The host's dataset size, columns, token statistics and loss, without its rows ("Samples") and with the
        loss's local paths (e.g. a teacher's folder) shortened."""
        info = super().compute_dataset_metrics(dataset, dataset_info, loss, *args, **kwargs)
        for key in _EXAMPLE_KEYS:
            info.pop(key, None)
        if "config_code" in (info.get("loss") or {}) and hasattr(loss, "get_config_dict"):
            config = loss.get_config_dict()
            if all(isinstance(v, (str, int, float, bool, list, type(None))) for v in config.values()):
                code = json.dumps(elide_local_paths(config), indent=4)
                info["loss"]["config_code"] = textwrap.indent(f"```json\n{code}\n```", "  ")
        return info

    def set_losses(self, losses: list[Any]) -> None:
        """The host's citations and tags, and each loss's ``get_config_dict()`` (the card's provenance)."""
        super().set_losses(losses)
        for loss in losses:
            if hasattr(loss, "get_config_dict"):
                self.loss_configs[type(loss).__name__] = _json_ready(loss.get_config_dict())

    def get_default_model_name(self) -> str:
        info = self.run_info or RunInfo()
        if info.model_name:
            return info.model_name
        if self.model_id:
            return self.model_id.split("/")[-1]
        base = hub_model_id(info.student_base) or self.base_model
        if base:
            return f"MD2PR {base.split('/')[-1]}"
        return f"MD2PR {short_path(info.student_base)}" if info.student_base else "MD2PR dense retriever"

    def to_dict(self) -> dict[str, Any]:
        """The host's template variables, plus MD2PR's (``md2pr_*``) and its front matter; with ``save_dir`` set
        (``model.save``), also copies the plots and writes ``md2pr_card_data.json`` there."""
        data = super().to_dict()  # the same dict that the host's to_yaml then reads
        for key, value in self.kept_rendered.items():
            if not data.get(key):
                data[key] = value
        self._update_front_matter(data)
        data.update(self._md2pr_context(data))
        for key in ("all_hyperparameters", "non_default_hyperparameters"):
            data[key] = {name: display_value(value) for name, value in (data.get(key) or {}).items()}
        if self.save_dir:
            self._save_files(Path(self.save_dir), data)
        return data

    def _loss_config(self) -> dict[str, Any]:
        """The MD2PR loss's config (the one with ``alpha``), when the model was trained with one."""
        return next((config for config in self.loss_configs.values() if "alpha" in config), {})

    def _update_front_matter(self, data: dict[str, Any]) -> None:
        info = self.run_info or RunInfo()
        data["language"] = self.language or [info.language]
        data["license"] = self.license or info.license
        data["base_model"] = hub_model_id(info.student_base) or data.get("base_model")
        # Only ids that are Hub datasets: the user's, and those the host looked up on the Hub.
        data["datasets"] = list(dict.fromkeys([*(data.get("datasets") or []), *info.datasets]))
        after = (self.metrics or {}).get("after") or {}
        title = info.dataset_title or "Evaluation data"
        dataset_type = info.datasets[0] if info.datasets else title.lower().replace(" ", "-")
        model_index = build_model_index(after, data["model_name"], title, dataset_type, info.split)
        if model_index:
            data["metrics"] = [MODEL_INDEX_METRICS[k] for k in MODEL_INDEX_METRICS if after.get(k) is not None]
            data["model-index"] = model_index

    def _md2pr_context(self, data: dict[str, Any]) -> dict[str, Any]:
        """Template variables of the MD2PR sections."""
        info, loss = self.run_info or RunInfo(), self._loss_config()
        teacher = info.teacher or loss.get("teacher")
        alpha = info.alpha if info.alpha is not None else loss.get("alpha")
        beta = info.beta if info.beta is not None else loss.get("beta")
        temperatures = info.temperatures or {
            key: loss[key] for key in ("teacher_temperature", "student_temperature", "word_temperature") if key in loss
        }
        base = display_model(info.student_base) or display_model(data.get("base_model"))
        title = info.dataset_title
        provenance = [
            ("Teacher (cross-encoder)", display_model(teacher) or NOT_RECORDED),
            ("Student base (dual-encoder)", base or NOT_RECORDED),
            ("Training data", f"{title}, evaluated on split `{info.split}`" if title else NOT_RECORDED),
            ("Sentence-level weight `alpha`", NOT_RECORDED if alpha is None else f"{alpha:.6f}"),
            ("Word-level weight `beta`", NOT_RECORDED if beta is None else f"{beta:.6f}"),
            *((f"Temperature `{name}`", display_value(value)) for name, value in temperatures.items()),
        ]
        shown = {"teacher", "model", "student_base", "alpha", "beta", "scale", "sentence_level_teacher"}
        shown |= {f"{name}_temperature" for name in ("teacher", "student", "word")}
        corpus_size = ((self.metrics or {}).get("after") or {}).get("corpus_size")
        caption = f"{title or 'The evaluation data'}, split `{info.split}`" + (
            f", exact search over the whole corpus of {corpus_size:,} passages."
            if isinstance(corpus_size, int)
            else "."
        )
        citations = {name: text for name, text in (data.get("citations") or {}).items() if "2312.16821" not in text}
        return {
            "md2pr_teacher": display_model(teacher),
            "md2pr_student_base": base,
            "md2pr_dataset": title,
            "md2pr_rag24": info.is_rag24,
            "md2pr_sentence_level_teacher": info.sentence_level_teacher,
            "md2pr_word_level_off": beta == 0,
            "md2pr_provenance": provenance,
            "md2pr_settings": info.settings_rows(shown),
            "md2pr_rounds": [self._round_row(r) for r in info.rounds],
            "md2pr_result_columns": list(RESULT_COLUMNS),
            "md2pr_results": [
                {"label": f"`{row}`", "cells": [_fmt(values.get(c)) for c in RESULT_COLUMNS]}
                for row in RESULT_ROWS
                if (values := (self.metrics or {}).get(row))
            ],
            "md2pr_results_caption": caption,
            "md2pr_plots": [
                {"title": Path(plot_name(p)).stem.replace("_", " ").replace("-", " "), "path": self._plot_link(p)}
                for p in self.plots
            ],
            "md2pr_command": info.command or "# not recorded",
            "md2pr_language": ", ".join(data["language"]),
            "md2pr_citation": MD2PR_CITATION.strip(),
            "md2pr_other_citations": citations,
            "md2pr_version": __version__,
        }

    @staticmethod
    def _round_row(r: Any) -> dict[str, str]:
        return {
            "round": str(r.round),
            "rule": r.rule_text(),
            "candidates_scored": _fmt(r.candidates_scored),
            "flagged": _fmt(r.flagged),
            "filter_rate": "-" if r.filter_rate is None else f"{100 * r.filter_rate:.2f}%",
            "dev_ndcg_at_10": _fmt(r.dev_ndcg_at_10),
        }

    @staticmethod
    def _plot_link(plot: Path) -> str:
        return f"{PLOTS_DIR}/{plot_name(plot)}"

    def _save_files(self, folder: Path, data: dict[str, Any]) -> None:
        """Copy the plots into ``folder/plots`` and write the card data state next to the card."""
        for plot in self.plots:
            target = folder / PLOTS_DIR / plot_name(plot)
            if plot.resolve() != target.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp:  # never writes through a hard link to another folder's file
                    shutil.copyfile(plot, tmp)
        trained = bool(self.all_hyperparameters or self.training_logs or self.train_datasets)
        state = {
            "md2pr_st": data["md2pr_version"],
            "run_info": self.run_info.to_dict() if self.run_info else None,
            "metrics": self.metrics,
            "plots": [plot_name(p) for p in self.plots],
            "loss_configs": self.loss_configs,
            "fields": {name: getattr(self, name) for name in _KEPT_FIELDS},
            "rendered": {key: data[key] for key in _KEPT_RENDERED if data.get(key)},
            "version": self.version if trained else None,
        }
        with atomic_path(folder / CARD_DATA_FILE) as tmp:
            tmp.write_text(json.dumps(elide_local_paths(_json_ready(state)), indent=2) + "\n", encoding="utf-8")


def use_md2pr_card_data(model: Any, **kwargs: Any) -> MD2PRModelCardData:
    """Give ``model`` an :class:`MD2PRModelCardData`, keeping what its card data already holds (id, language,
    licence, datasets, tags, base model). Call it before building the trainer, so that the trainer fills it.

    Example:
        >>> from sentence_transformers import SentenceTransformer
        >>> from sentence_transformers.sentence_transformer.modules import StaticEmbedding
        >>> from tokenizers import Tokenizer, models
        >>> tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "snake": 1}, unk_token="[UNK]"))
        >>> model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu")
        >>> card_data = use_md2pr_card_data(model, run_info={"teacher": "cross-encoder/ms-marco-MiniLM-L6-v2"})
        >>> model.model_card_data is card_data, card_data.model is model, type(card_data).__name__
        (True, True, 'MD2PRModelCardData')
    """
    old = model.model_card_data
    if isinstance(old, MD2PRModelCardData) and not kwargs:
        return old
    user_fields = ("language", "license", "model_name", "model_id", "task_name", "local_files_only")
    values = {name: getattr(old, name) for name in user_fields if hasattr(old, name)}
    card_data = MD2PRModelCardData(**{**values, **kwargs})
    for name in ("train_datasets", "eval_datasets", "base_model", "base_model_revision"):
        if getattr(old, name, None):
            setattr(card_data, name, getattr(old, name))
    card_data.add_tags(list(getattr(old, "tags", None) or []))
    model.model_card_data = card_data
    card_data.register_model(model)
    return card_data
