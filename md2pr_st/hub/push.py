"""Push a trained MD2PR model (a model folder or a pipeline run folder) to the Hugging Face Hub, in one commit.

``md2pr push RUN_OR_MODEL_DIR --repo_id org/name [--private] [--revision BRANCH] [--dry_run]``

What is uploaded: the model folder's own files (safetensors weights only; symlinks that leave the folder are
refused), and for a run folder (``model/`` + ``metrics.json`` + ``run_info.json`` + plots) also ``metrics.json``,
``run_info.json``, and the MD2PR card rendered for the repo id with its plots under ``plots/``. The upload is one
``HfApi.create_commit``. The token comes from ``token=``, ``HF_TOKEN`` or the login cache (``hf auth login``); it
is never printed, logged, written to the card or put in an error message. Errors are huggingface_hub's own, with
the token redacted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import CommitOperationAdd, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from sentence_transformers import SentenceTransformer

from md2pr_st._version import __version__
from md2pr_st.hub.card_data import CARD_DATA_FILE, MD2PRModelCardData
from md2pr_st.hub.model_card import (
    METRICS_FILE,
    RUN_INFO_FILE,
    load_json,
    load_with_card_data,
    run_plots,
    save_model_card,
)
from md2pr_st.hub.model_folder import iter_upload_files, resolve_source, validate_model_folder
from md2pr_st.hub.run_info import RunInfo, redact_tokens

logger = logging.getLogger(__name__)

LOGIN_HINT = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"
PLACEHOLDER_MODEL_ID = "sentence_transformers_model_id"  # the host card's model id before it has one


class HubPushError(RuntimeError):
    """A Hub call of a push failed: huggingface_hub's own message, with the token redacted.

    Attributes:
        status_code: the HTTP status, when the Hub answered.
        error_type: the name of huggingface_hub's (or the HTTP client's) exception.

    Example:
        >>> error = HubPushError("Cannot create org/x: HfHubHTTPError: 403 Forbidden", 403, "HfHubHTTPError")
        >>> error.status_code, error.error_type
        (403, 'HfHubHTTPError')
    """

    def __init__(self, message: str, status_code: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


@dataclasses.dataclass
class PushResult:
    """What :func:`push_to_hub` did (or, for a dry run, would do).

    Attributes:
        repo_id: the target repository.
        private: the visibility asked for (applies to a new repo only).
        revision: the branch (None: ``main``).
        files: ``(path in repo, size in bytes)`` for every uploaded file, sorted.
        dry_run: nothing was uploaded and no Hub API was called.
        created: True when the repo was created by this push, False when it existed.
        commit_url: the commit's URL (None for a dry run).
        token_source: where the token came from (``argument``, ``HF_TOKEN``, ``login cache``, or None).
        notes: messages for the user (e.g. that the repo already existed).

    Example:
        >>> result = PushResult("org/x", False, None, [("model.safetensors", 2_000_000), ("README.md", 500)], True)
        >>> print(result.summary())  # doctest: +NORMALIZE_WHITESPACE
        Dry run: nothing uploaded, no Hub API called. Would push 2 files (2.0 MB) to https://huggingface.co/org/x
          repo_id: org/x
          private: False
          revision: main
          token: none found
          files:
            model.safetensors 2,000,000 bytes
            README.md 500 bytes
    """

    repo_id: str
    private: bool
    revision: str | None
    files: list[tuple[str, int]]
    dry_run: bool
    created: bool | None = None
    commit_url: str | None = None
    token_source: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def summary(self) -> str:
        """A human-readable report: the target, the listing with sizes, the notes (never the token)."""
        head = "Dry run: nothing uploaded, no Hub API called. Would push" if self.dry_run else "Pushed"
        lines = [
            f"{head} {len(self.files)} files ({_human(self.total_bytes)}) to https://huggingface.co/{self.repo_id}",
            f"  repo_id: {self.repo_id}",
            f"  private: {self.private}",
            f"  revision: {self.revision or 'main'}",
        ]
        if self.dry_run:
            lines.append(f"  token: {'found (' + self.token_source + ')' if self.token_source else 'none found'}")
        width = max((len(path) for path, _ in self.files), default=0)
        lines.append("  files:")
        lines += [f"    {path:<{width}}  {size:>13,} bytes" for path, size in self.files]
        if self.commit_url:
            lines.append(f"  commit: {self.commit_url}")
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _load(model_dir: Path, card_data: MD2PRModelCardData | None = None) -> Any:
    try:
        if card_data is not None:
            return load_with_card_data(model_dir, card_data)
        return SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # any failure means the pushed repo would not load either
        raise ValueError(
            f"The model in {model_dir} does not load with SentenceTransformer(..., trust_remote_code=False): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def plan_upload(
    run_or_model_dir: str | Path,
    repo_id: str,
    card_dir: str | Path,
    *,
    check_load: bool = True,
    dataset_ids: Iterable[str] | None = None,
) -> dict[str, Path]:
    """What a push uploads: path in the repo -> local file, with the card rendered for ``repo_id`` in ``card_dir``.

    A model folder carrying MD2PR card data (``md2pr_card_data.json``), or a run folder, gets its MD2PR card
    rendered again for ``repo_id`` (:func:`~md2pr_st.hub.write_model_card`); a run folder adds ``metrics.json``,
    ``run_info.json`` and its plots (:func:`~md2pr_st.hub.run_plots`). Another model folder keeps its card, with the
    usage snippet pointed at ``repo_id`` as the host does when it saves a model with an id.

    Raises:
        FileNotFoundError, ValueError: not a valid model or run folder (:func:`validate_model_folder`), or a model
            that does not load.

    Example:
        >>> import tempfile
        >>> from md2pr_st.models import embedded_student_path
        >>> files = plan_upload(embedded_student_path(), "org/minilm", tempfile.mkdtemp(), check_load=False)
        >>> files["model.safetensors"] == embedded_student_path() / "model.safetensors"  # uploaded from where it is
        True
        >>> sorted(files)[:3]
        ['1_Pooling/config.json', 'README.md', 'config.json']
    """
    model_dir, run_dir = resolve_source(run_or_model_dir)
    validate_model_folder(model_dir)
    card_dir = Path(card_dir)
    files = {p.relative_to(model_dir).as_posix(): p for p in iter_upload_files(model_dir)}
    if run_dir is not None or (model_dir / CARD_DATA_FILE).is_file() or dataset_ids is not None:
        card_data = MD2PRModelCardData.from_folder(model_dir, model_id=repo_id)
        for name in (METRICS_FILE, RUN_INFO_FILE):
            if run_dir is not None and (run_dir / name).is_file():
                files[name] = run_dir / name
        run_info, metrics = (load_json(files.get(name), name) for name in (RUN_INFO_FILE, METRICS_FILE))
        card_data.set_run(run_info, metrics, run_plots(run_dir) if run_dir is not None else [])
        if dataset_ids is not None:
            base = (card_data.run_info or RunInfo()).to_dict()
            card_data.run_info = RunInfo.from_dict({**base, "datasets": list(dataset_ids)})
        save_model_card(_load(model_dir, card_data), card_dir)
        files.update({p.relative_to(card_dir).as_posix(): p for p in iter_upload_files(card_dir)})
    else:
        if check_load:
            _load(model_dir)
        if "README.md" in files:
            text = files["README.md"].read_text(encoding="utf-8")
            (card_dir / "README.md").write_text(text.replace(f'"{PLACEHOLDER_MODEL_ID}"', f'"{repo_id}"'), "utf-8")
            files["README.md"] = card_dir / "README.md"
    return dict(sorted(files.items()))


def stage_upload(run_or_model_dir: str | Path, staging_dir: str | Path, repo_id: str) -> list[tuple[str, int]]:
    """Build in ``staging_dir`` exactly the folder that a push of ``run_or_model_dir`` uploads (see
    :func:`plan_upload`; weights are hard-linked where possible), and list it as ``(path, size)``.

    Example:
        >>> import tempfile
        >>> from md2pr_st.models import embedded_student_path
        >>> listing = dict(stage_upload(embedded_student_path(), tempfile.mkdtemp(), "org/minilm"))
        >>> listing["model.safetensors"], "2_Normalize" in str(listing)
        (90868376, False)
    """
    staging_dir = Path(staging_dir)
    with tempfile.TemporaryDirectory(prefix="md2pr-card-") as card_dir:
        for path_in_repo, source in plan_upload(run_or_model_dir, repo_id, card_dir).items():
            target = staging_dir / path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)  # no copy of large weights on the same file system
            except OSError:
                shutil.copy2(source, target)
    return [(p.relative_to(staging_dir).as_posix(), p.stat().st_size) for p in iter_upload_files(staging_dir)]


def _validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(
            f"repo_id must be NAMESPACE/NAME (your user name or an organisation, then the model name), e.g. "
            f"alice/md2pr-minilm; got {repo_id!r}."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"Invalid repo_id {repo_id!r}: {exc}") from None
    return repo_id


def _find_token(token: str | None) -> tuple[str | None, str | None]:
    """``(token, where it came from)``; the HF_TOKEN variable wins over the login cache."""
    if token:
        return token, "argument"
    found = get_token()
    if not found:
        return None, None
    return found, "HF_TOKEN" if os.environ.get("HF_TOKEN", "").strip() == found else "login cache"


def _hub_error(exc: BaseException, action: str, token: str, token_source: str | None) -> HubPushError:
    """huggingface_hub's error as it is, token redacted; an authentication failure says where the token came from."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    message = f"Cannot {action}: {type(exc).__name__}: {redact_tokens(str(exc), token)}"
    if status in (401, 403):
        message += (
            f"\nThe token came from {token_source or 'nowhere'}; a push needs one with write access ({LOGIN_HINT})."
        )
    return HubPushError(message, status_code=status, error_type=type(exc).__name__)


def push_to_hub(
    run_or_model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    *,
    dataset_ids: Iterable[str] | None = None,
    api: Any = None,
    check_load: bool = True,
) -> PushResult:
    """Push a model folder or a run folder to the Hub in one commit, with its card and plots.

    Steps: check the folder (:func:`validate_model_folder`) and that the model loads; plan the upload
    (:func:`plan_upload`: the MD2PR card rendered for ``repo_id``); then, unless ``dry_run``: ``repo_exists``,
    ``create_repo(private=private)`` when it does not, ``create_branch`` for a ``revision`` other than ``main``,
    and one ``create_commit`` with every file (an existing repo gets a new commit: same-named files are replaced,
    others kept, visibility unchanged).

    Args:
        run_or_model_dir: a saved SentenceTransformer folder, or a run folder holding ``model/``,
            ``metrics.json``, ``run_info.json`` and plots.
        repo_id: ``namespace/name``.
        private: create the repo private (ignored for an existing repo, with a note).
        revision: the branch to push to (created from ``main`` when missing); None means ``main``.
        dry_run: plan and list what would be uploaded; no Hub API call.
        token: a Hub token; default ``HF_TOKEN`` or the login cache. Never printed.
        commit_message: default ``"Upload MD2PR model (md2pr-st VERSION)"``.
        dataset_ids: Hub dataset ids of the training data, listed in the card's ``datasets:``.
        api: an ``huggingface_hub.HfApi``-like object (tests); default ``HfApi(token=token)``.
        check_load: load the model before pushing (always done when a card is rendered).

    Returns:
        A :class:`PushResult`; ``print(result.summary())`` lists the files and sizes.

    Raises:
        FileNotFoundError, ValueError: not a model or run folder, pickle weights, custom code, a symlink out of the
            folder, a model that does not load, a bad repo id.
        HubPushError: no token, or a failed Hub call (huggingface_hub's message, token redacted).

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> result = push_to_hub(embedded_student_path(), "alice/minilm", dry_run=True, check_load=False)
        >>> print(result.summary())  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        Dry run: nothing uploaded, no Hub API called. Would push 12 files (91.6 MB) to https://huggingface.co/alice/minilm
        ...
            model.safetensors 90,868,376 bytes
        ...
    """
    repo_id = _validate_repo_id(repo_id)
    revision = revision or None
    commit_message = commit_message or f"Upload MD2PR model (md2pr-st {__version__})"
    token, token_source = _find_token(token)
    if token is None and not dry_run:
        raise HubPushError(
            f"No Hugging Face token found (checked the token argument, HF_TOKEN and the login cache): {LOGIN_HINT} "
            "to a token with write access (https://huggingface.co/settings/tokens). Nothing was uploaded."
        )
    with tempfile.TemporaryDirectory(prefix="md2pr-card-") as card_dir:
        files = plan_upload(run_or_model_dir, repo_id, card_dir, check_load=check_load, dataset_ids=dataset_ids)
        listing = [(path, source.stat().st_size) for path, source in files.items()]
        result = PushResult(repo_id, private, revision, listing, dry_run, token_source=token_source)
        if not dry_run:
            _commit(api, files, result, token, commit_message)
    return result


def _commit(api: Any, files: dict[str, Path], result: PushResult, token: str, commit_message: str) -> None:
    """Create the repo and branch when missing, then upload ``files`` in one commit."""
    if api is None:
        api = huggingface_hub.HfApi(token=token)  # looked up now: a test may stand a mock in its place
    repo_id = result.repo_id

    def call(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # the cause is dropped: its request carries the token in a header
            raise _hub_error(exc, action, token, result.token_source) from None

    exists = call(f"check whether {repo_id} exists", api.repo_exists, repo_id, repo_type="model")
    if exists:
        result.created = False
        result.notes.append(
            f"{repo_id} already exists: this push adds one commit to it (files with the same path are replaced, "
            "other files are kept)"
            + ("; --private applies only to new repos, its visibility is unchanged." if result.private else ".")
        )
    else:
        call(f"create {repo_id}", api.create_repo, repo_id, repo_type="model", private=result.private, exist_ok=True)
        result.created = True
        logger.info("Created %s (private=%s)", repo_id, result.private)
    if result.revision and result.revision != "main":
        call(
            f"create the branch {result.revision!r}",
            api.create_branch,
            repo_id,
            branch=result.revision,
            repo_type="model",
            exist_ok=True,
        )
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(source)) for path, source in files.items()]
    info = call(
        f"upload {len(operations)} files to {repo_id}",
        api.create_commit,
        repo_id,
        operations,
        commit_message=commit_message,
        repo_type="model",
        revision=result.revision,
    )
    result.commit_url = str(getattr(info, "commit_url", "") or "") or None
    logger.info("Pushed %d files to %s", len(operations), repo_id)
