"""Model cards for MD2PR students, rendered by the host library from :class:`MD2PRModelCardData`.

A card is what ``SentenceTransformer.save`` writes when the model's card data is an
:class:`~md2pr_st.hub.MD2PRModelCardData`: the template ``model_cards/md2pr_model_card_template.md`` (Jinja2) with
the host's variables (architecture, usage, training datasets, loss, hyperparameters, logs, framework versions) and
MD2PR's: Hub metadata with a ``model-index`` equal to ``metrics.json``, the teacher, the student base, loss weights
and temperatures, the false-negative filter of each mining round, the results table, plots, the training command,
limitations and the citation. :func:`write_model_card` renders it again for a saved model, e.g. once a run's metrics
are known.

No text of the training or evaluation data goes into a card: :class:`MD2PRModelCardData` never takes any, and
:func:`remove_dataset_texts` clears it from a host card data object (e.g. a teacher cross-encoder's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.model_card import generate_model_card

from md2pr_st.hub.card_data import (
    MD2PRModelCardData,
    plot_name,
)
from md2pr_st.hub.model_index import build_model_index
from md2pr_st.hub.run_info import RunInfo
from md2pr_st.utils import atomic_path

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RUN_INFO_FILE = "run_info.json"


def load_json(value: Mapping[str, Any] | str | Path | None, what: str) -> dict[str, Any] | None:
    """``value`` as a dict: a mapping as it is, a path read as JSON (``what`` names it in errors), None as None.

    Example:
        >>> load_json({"after": {}}, "metrics"), load_json(None, "metrics")
        ({'after': {}}, None)
        >>> load_json("no/such/metrics.json", "metrics")
        Traceback (most recent call last):
        ...
        FileNotFoundError: The metrics file no/such/metrics.json does not exist.
    """
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} file {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"The {what} file {path} is not valid JSON: {exc}") from exc


def run_plots(run_dir: str | Path) -> list[Path]:
    """The plots of a run folder, in the card's order: the run's ``*.png`` (loss parts, rounds), then each
    round's ``round_*/filter_gaps.png`` (the teacher's score gaps and the threshold of the round).

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> for name in ("rounds.png", "loss_parts.png", "round_1/filter_gaps.png"):
        ...     (run / name).parent.mkdir(exist_ok=True); _ = (run / name).write_bytes(b"png")
        >>> [p.relative_to(run).as_posix() for p in run_plots(run)]
        ['loss_parts.png', 'rounds.png', 'round_1/filter_gaps.png']
    """
    run_dir = Path(run_dir)
    rounds = sorted(run_dir.glob("round_*/filter_gaps.png"), key=lambda p: (len(p.parent.name), p.parent.name))
    return [*sorted(run_dir.glob("*.png")), *rounds]


def remove_dataset_texts(card_data: Any) -> Any:
    """Clear the dataset texts that the host's trainer put into ``card_data`` (a model's ``model_card_data``).

    For a host card data object (e.g. a teacher ``CrossEncoder``'s): call it after building the trainer (its
    model-card callback fills the card data when the trainer is built). It drops the widget examples and the usage
    snippet's sentences (rows of the train or eval dataset), and the first rows of each dataset ("Samples" tables);
    the dataset sizes, column names, token statistics and the loss stay. ``generate_widget_examples=False`` alone
    is not enough: in sentence-transformers 6.2 it only skips computing similarities, the examples are still taken
    from the data. An :class:`MD2PRModelCardData` never takes them in the first place.

    Returns:
        ``card_data``, changed in place.

    Example:
        >>> from sentence_transformers import SentenceTransformerModelCardData
        >>> card_data = SentenceTransformerModelCardData(local_files_only=True)
        >>> card_data.train_datasets = [{"size": 2, "examples": {"query": ["a private text"]}}]
        >>> remove_dataset_texts(card_data).train_datasets
        [{'size': 2}]
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


def save_model_card(model: Any, folder: str | Path) -> Path:
    """Render ``model``'s card with the host's ``generate_model_card`` and write it to ``folder/README.md``
    (atomically), with what the card data saves next to it (plots, ``md2pr_card_data.json``).

    This is what ``model.save(folder)`` does for the card, without saving the weights again: e.g. for the card of
    a model folder opened with :func:`load_with_card_data`.

    Example:
        >>> import tempfile
        >>> from md2pr_st.models import embedded_student_path
        >>> model = load_with_card_data(embedded_student_path(), MD2PRModelCardData(local_files_only=True))
        >>> model.model_card_data.set_run(metrics={"after": {"ndcg@10": 0.41}})
        >>> card = save_model_card(model, tempfile.mkdtemp())
        >>> "| `after` | 0.4100 |" in card.read_text(), (card.parent / "md2pr_card_data.json").is_file()
        (True, True)
    """
    folder = Path(folder)
    model.model_card_data.save_dir = str(folder)
    text = generate_model_card(model)
    target = folder / "README.md"
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def load_with_card_data(model_dir: str | Path, card_data: MD2PRModelCardData) -> Any:
    """Load the SentenceTransformer in ``model_dir`` on CPU, offline and without remote code, with ``card_data``.

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> model = load_with_card_data(embedded_student_path(), MD2PRModelCardData(local_files_only=True))
        >>> type(model.model_card_data).__name__, model.get_embedding_dimension()
        ('MD2PRModelCardData', 384)
    """
    return SentenceTransformer(
        str(model_dir), device="cpu", local_files_only=True, trust_remote_code=False, model_card_data=card_data
    )


def write_model_card(
    model_dir: str | Path,
    metrics: Mapping[str, Any] | str | Path | None = None,
    run_info: RunInfo | Mapping[str, Any] | str | Path | None = None,
    *,
    plots: Iterable[str | Path] = (),
    model_id: str | None = None,
    template_path: str | Path | None = None,
    dataset_ids: Iterable[str] | None = None,
) -> Path:
    """Render the MD2PR model card of the saved model in ``model_dir`` to ``model_dir/README.md``.

    Starts from the card data saved with the model (``md2pr_card_data.json``: what the trainer recorded, and an
    earlier card's run info, metrics and plots) and sets what is given here; the host library renders the card
    (:class:`MD2PRModelCardData`). Writing again (e.g. with the repo id at push time) gives the same card with the
    new values. The README is written atomically; the plots are copied to ``model_dir/plots/``.

    Args:
        model_dir: a saved SentenceTransformer folder.
        metrics: ``metrics.json`` contents or path: ``{"before": {...}, "after": {...}, "teacher_rerank": {...}}``.
            The ``model-index`` takes ``after``'s ndcg@10, mrr@10, recall@100 and map@100, unrounded.
        run_info: a :class:`RunInfo`, a dict or a ``run_info.json`` path.
        plots: image files (e.g. :func:`run_plots` of the run folder); copied to ``model_dir/plots/``.
        model_id: the Hub id (``org/name``) used in the usage snippet and the title.
        template_path: another Jinja2 template (default ``model_cards/md2pr_model_card_template.md``).
        dataset_ids: Hub dataset ids of the training data, for the card's ``datasets:`` (replaces the run info's).

    Returns:
        The path of the card.

    Raises:
        FileNotFoundError: ``model_dir``, a metrics/run-info file, a plot or the template is missing.
        ValueError: a metrics/run-info file is not JSON, or a dataset id is not a Hub id.

    Example:
        >>> import tempfile
        >>> from huggingface_hub import ModelCard
        >>> from sentence_transformers import SentenceTransformer
        >>> from sentence_transformers.sentence_transformer.modules import StaticEmbedding
        >>> from tokenizers import Tokenizer, models
        >>> tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "snake": 1}, unk_token="[UNK]"))
        >>> folder = Path(tempfile.mkdtemp()) / "model"
        >>> SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu").save(str(folder))
        >>> card = write_model_card(folder, {"after": {"ndcg@10": 0.41, "mrr@10": 0.5}},
        ...                         {"teacher": "cross-encoder/ms-marco-MiniLM-L6-v2", "alpha": 1.0}, model_id="org/md2pr")
        >>> meta = ModelCard.load(card).data.to_dict()
        >>> meta["model-index"][0]["results"][0]["metrics"][0]["value"], "md2pr" in meta["tags"]
        (0.41, True)
        >>> 'SentenceTransformer("org/md2pr")' in card.read_text()
        True
    """
    model_dir = Path(model_dir)
    if not (model_dir / "modules.json").is_file():
        raise FileNotFoundError(f"Model folder {model_dir} does not exist or holds no saved SentenceTransformer.")
    metrics_data = load_json(metrics, "metrics")
    info = run_info if isinstance(run_info, RunInfo) else load_json(run_info, "run info")
    card_data = MD2PRModelCardData.from_folder(model_dir, **({"model_id": model_id} if model_id else {}))
    card_data.set_run(info, metrics_data, list(plots))
    if dataset_ids is not None:
        base = (card_data.run_info or RunInfo()).to_dict()
        card_data.run_info = RunInfo.from_dict({**base, "datasets": list(dataset_ids)})
    if template_path is not None:
        card_data.template_path = Path(template_path)
    if not Path(card_data.template_path).is_file():
        raise FileNotFoundError(
            f"The model card template {card_data.template_path} is missing. It ships in model_cards/ (installed as "
            "md2pr_st.model_cards); reinstall md2pr-st or pass template_path=."
        )
    if not (model_dir / "md2pr_card_data.json").is_file():
        logger.info("%s has no md2pr_card_data.json: the card cannot show what its training recorded", model_dir)
    return save_model_card(load_with_card_data(model_dir, card_data), model_dir)


__all__ = [
    "METRICS_FILE",
    "RUN_INFO_FILE",
    "build_model_index",
    "load_json",
    "load_with_card_data",
    "plot_name",
    "remove_dataset_texts",
    "run_plots",
    "save_model_card",
    "write_model_card",
]
