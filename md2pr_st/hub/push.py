"""Push a trained MD2PR model (a model folder or a pipeline run folder) to the Hugging Face Hub.

``md2pr push RUN_OR_MODEL_DIR --repo_id org/name [--private] [--revision BRANCH] [--dry_run]``

What gets uploaded, in one commit: the model folder (safetensors weights only), and for a run folder
(``model/`` + ``metrics.json`` + ``run_info.json`` + ``*.png``) also ``metrics.json``, ``run_info.json``, the plots
under ``plots/`` and a model card re-rendered for the repo id (:func:`md2pr_st.hub.write_model_card`).
The token comes from ``token=``, ``HF_TOKEN`` or the login cache (``hf auth login``); it is never printed, logged,
written to the card or put in an error message.

:func:`add_to_hub_cache` places a folder in the standard Hub cache layout, so that ``SentenceTransformer("org/name")``
loads it offline (``HF_HUB_OFFLINE=1``), e.g. on a machine without Hub access.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from md2pr_st import __version__
from md2pr_st.hub.model_card import (
    METRICS_FILE,
    PLOTS_DIR,
    RUN_INFO_FILE,
    redact_tokens,
    replace_usage_model_id,
    write_model_card,
)

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
LOGIN_HINT = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"


class HubPushError(RuntimeError):
    """A push to the Hub failed; the message says why and how to fix it (and never holds the token)."""


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
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _iter_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` that belong in a model repo: no hidden files/folders, no ``__pycache__``."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file():
            yield path


def validate_model_folder(model_dir: str | Path) -> None:
    """Check that ``model_dir`` is a plain sentence-transformers model that loads without remote code.

    Checks: ``modules.json`` lists only ``sentence_transformers`` modules whose folders exist; weights are
    safetensors (no ``*.bin``/``*.pt``/pickle files anywhere); no ``auto_map`` (custom code) in ``config.json``.

    Raises:
        FileNotFoundError: no ``modules.json`` or a module folder is missing.
        ValueError: pickle weights, no safetensors weights, custom modules or custom code.

    Example:
        >>> import tempfile
        >>> validate_model_folder(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... has no modules.json: it is not a saved SentenceTransformer ...
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no modules.json: it is not a saved SentenceTransformer (save one with model.save(path))."
        )
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{modules_file} is not valid JSON: {exc}") from exc
    if not isinstance(modules, list) or not modules:
        raise ValueError(f"{modules_file} should list the model's modules, but holds {str(modules)[:80]!r}.")
    for module in modules:
        module_type = str(module.get("type", ""))
        if not module_type.startswith("sentence_transformers."):
            raise ValueError(
                f"{model_dir}: module {module.get('name')!r} has type {module_type!r}, which is not part of "
                "sentence-transformers; loading it would need custom code (trust_remote_code). MD2PR models are "
                "plain sentence-transformers folders: rebuild the model from sentence-transformers modules."
            )
        if not (model_dir / str(module.get("path", ""))).is_dir():
            raise FileNotFoundError(
                f"{model_dir}: the folder {module.get('path')!r} of module {module_type} is missing."
            )
    files = list(_iter_files(model_dir))
    pickles = [str(p.relative_to(model_dir)) for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ValueError(
            f"{model_dir} holds pickle-based files {pickles[:5]}; only safetensors weights are pushed (pickles can "
            "run code when loaded). Re-save the model with `SentenceTransformer(path).save(path)` (safetensors is "
            "the default) and delete these files."
        )
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{model_dir} has no *.safetensors weights; re-save it with `SentenceTransformer.save`.")
    for config_file in (p for p in files if p.name == "config.json"):
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file} is not valid JSON: {exc}") from exc
        if isinstance(config, dict) and config.get("auto_map"):
            raise ValueError(
                f"{config_file} has an auto_map: the model needs custom code (trust_remote_code) to load. Push a "
                "model built on a transformers architecture instead."
            )


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of large weights when staging on the same file system
    except OSError:
        shutil.copy2(src, dst)


def _make_staging(source: Path) -> Path:
    """A temporary folder next to ``source`` (same file system: weights are hard-linked, not copied)."""
    try:
        return Path(tempfile.mkdtemp(prefix=".md2pr-push-", dir=source.resolve().parent))
    except OSError:  # a read-only parent: stage in the system temp folder
        return Path(tempfile.mkdtemp(prefix="md2pr-push-"))


def _resolve_source(run_or_model_dir: str | Path) -> tuple[Path, Path | None]:
    """``(model folder, run folder or None)``."""
    path = Path(run_or_model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a folder; give a model folder or a run folder.")
    if (path / "modules.json").is_file():
        return path, None
    if (path / "model" / "modules.json").is_file():
        return path / "model", path
    raise FileNotFoundError(
        f"{path} is neither a model folder (no modules.json) nor a run folder (no model/modules.json)."
    )


def stage_upload(run_or_model_dir: str | Path, staging_dir: str | Path, repo_id: str) -> list[tuple[str, int]]:
    """Build in ``staging_dir`` exactly the folder to upload, and list it as ``(path, size)``.

    A model folder is staged as is, with its card's usage snippets pointed at ``repo_id``. A run folder adds
    ``metrics.json``, ``run_info.json`` and its ``*.png`` (and ``plots/*.png``) plots, and re-renders the card.

    Raises:
        FileNotFoundError, ValueError: the folder is not a valid model or run folder
            (see :func:`validate_model_folder`).
    """
    model_dir, run_dir = _resolve_source(run_or_model_dir)
    validate_model_folder(model_dir)
    staging_dir = Path(staging_dir)
    for path in _iter_files(model_dir):
        _link_or_copy(path, staging_dir / path.relative_to(model_dir))
    readme = staging_dir / "README.md"
    if readme.is_file():
        readme.unlink()  # replaced below, never edited through a hard link to the source
        shutil.copyfile(model_dir / "README.md", readme)
    metrics, run_info, plots = None, None, []
    if run_dir is not None:
        for name in (METRICS_FILE, RUN_INFO_FILE):
            if (run_dir / name).is_file():
                _link_or_copy(run_dir / name, staging_dir / name)
        metrics = run_dir / METRICS_FILE if (run_dir / METRICS_FILE).is_file() else None
        run_info = run_dir / RUN_INFO_FILE if (run_dir / RUN_INFO_FILE).is_file() else None
        # the run's plots, then those an earlier card already linked from the model folder (same names: once)
        plots = [*sorted(run_dir.glob("*.png")), *sorted((run_dir / PLOTS_DIR).glob("*.png"))]
        plots += sorted((staging_dir / PLOTS_DIR).glob("*.png"))
    if metrics is not None or run_info is not None or plots:
        write_model_card(staging_dir, metrics, run_info, plots=plots, model_id=repo_id)
    elif readme.is_file():
        readme.write_text(replace_usage_model_id(readme.read_text(encoding="utf-8"), repo_id), encoding="utf-8")
    return [(str(p.relative_to(staging_dir).as_posix()), p.stat().st_size) for p in _iter_files(staging_dir)]


def _check_loads(folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    try:
        SentenceTransformer(str(folder), device="cpu", trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # any failure means the pushed repo would not load either
        raise ValueError(
            f"The staged model does not load with SentenceTransformer(..., trust_remote_code=False): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _validate_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

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
    from huggingface_hub import get_token

    if token:
        return token, "argument"
    found = get_token()
    if not found:
        return None, None
    return found, "HF_TOKEN" if os.environ.get("HF_TOKEN", "").strip() == found else "login cache"


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP clients huggingface_hub may use (httpx2, httpx, requests)."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors += [getattr(module, name) for name in names if isinstance(getattr(module, name, None), type)]
    return tuple(errors)


def _explain(exc: BaseException, action: str, repo_id: str, token: str, token_source: str | None) -> HubPushError:
    """A clear, token-free error for a failed Hub call."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    namespace = repo_id.split("/")[0]
    detail = redact_tokens(str(getattr(exc, "server_message", None) or exc).strip().splitlines()[0][:300], token)
    if isinstance(exc, OfflineModeIsEnabled):
        message = (
            f"Cannot {action}: huggingface_hub is in offline mode (HF_HUB_OFFLINE=1, which the Makefile sets). "
            "Run the push with HF_HUB_OFFLINE=0, e.g. `HF_HUB_OFFLINE=0 md2pr push ...`. Nothing was uploaded."
        )
    elif isinstance(exc, LocalTokenNotFoundError):
        message = f"Cannot {action}: no Hugging Face token found; {LOGIN_HINT} to a token with write access."
    elif isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        source = f" (from {token_source})" if token_source else ""
        if status == 401:
            message = (
                f"Cannot {action}: the Hub rejected the token{source} (401: invalid or expired). Create a token "
                f"with write access at https://huggingface.co/settings/tokens, then {LOGIN_HINT} to it"
                + ("; HF_TOKEN takes precedence over the login cache." if token_source == "HF_TOKEN" else ".")
            )
        elif status == 403:
            message = (
                f"Cannot {action}: forbidden (403). The token{source} may be read-only, or the namespace "
                f"{namespace!r} belongs to someone else. Use a token with write access to {namespace!r} "
                f"(https://huggingface.co/settings/tokens) or push to your own namespace (--repo_id YOURNAME/"
                f"{repo_id.split('/')[1]}). Server: {detail}"
            )
        elif isinstance(exc, RevisionNotFoundError):
            message = f"Cannot {action}: revision not found on {repo_id}. Server: {detail}"
        elif isinstance(exc, RepositoryNotFoundError) or status == 404:
            message = (
                f"Cannot {action}: {repo_id} was not found, or the token cannot see it. Check the repo id and "
                f"that the token has access to {namespace!r}."
            )
        else:
            message = f"Cannot {action}: the Hub answered {status}. Server: {detail}"
    elif isinstance(exc, _network_errors()):
        message = (
            f"Cannot {action}: the Hub could not be reached ({type(exc).__name__}). Check the network connection, "
            "a proxy (HTTPS_PROXY) or HF_ENDPOINT, then retry; nothing was uploaded."
        )
    else:
        message = f"Cannot {action}: {type(exc).__name__}: {redact_tokens(str(exc), token)}"
    return HubPushError(redact_tokens(message, token))


def push_to_hub(
    run_or_model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    *,
    api: Any = None,
    check_load: bool = True,
) -> PushResult:
    """Push a model folder or a run folder to the Hub in one commit, with its card and plots.

    Steps: validate the folder (safetensors only, no custom code) and stage the upload (see :func:`stage_upload`);
    check that the staged folder loads with ``SentenceTransformer``; then, unless ``dry_run``: ``whoami`` (the
    token works; the namespace is the user's or one of their organisations), ``create_repo(repo_id,
    private=private, exist_ok=False)`` (an existing repo gets a new commit: same-named files are replaced, others
    kept, visibility unchanged), ``create_branch`` for a ``revision`` other than ``main``, and one
    ``upload_folder``.

    Args:
        run_or_model_dir: a saved SentenceTransformer folder, or a run folder holding ``model/``,
            ``metrics.json``, ``run_info.json`` and ``*.png`` plots.
        repo_id: ``namespace/name``.
        private: create the repo private (ignored for an existing repo, with a note).
        revision: the branch to push to (created from ``main`` when missing); None means ``main``.
        dry_run: stage and list what would be uploaded; no Hub API call.
        token: a Hub token; default ``HF_TOKEN`` or the login cache. Never printed.
        commit_message: default ``"Upload MD2PR model (md2pr-st VERSION)"``.
        api: an ``huggingface_hub.HfApi``-like object (tests); default ``HfApi(token=token)``.
        check_load: load the staged folder with ``SentenceTransformer`` before pushing.

    Returns:
        A :class:`PushResult`; ``print(result.summary())`` lists the files and sizes.

    Raises:
        FileNotFoundError, ValueError: not a model or run folder, pickle weights, custom code, bad repo id.
        HubPushError: no token, a rejected token (401), forbidden (403), offline mode, a network failure, or
            another Hub error; the message names the fix and never contains the token.

    Example:
        >>> result = push_to_hub("path/to/run", "alice/md2pr-minilm", dry_run=True)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
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
    staging = _make_staging(Path(run_or_model_dir))
    try:
        files = stage_upload(run_or_model_dir, staging, repo_id)
        if check_load:
            _check_loads(staging)
        result = PushResult(repo_id, private, revision, files, dry_run, token_source=token_source)
        if dry_run:
            return result
        _push_staged(api, staging, result, token, commit_message)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _push_staged(api: Any, staging: Path, result: PushResult, token: str, commit_message: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo_id = result.repo_id
    namespace, name = repo_id.split("/")

    def call(action: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # every failure becomes a token-free HubPushError
            raise _explain(exc, action, repo_id, token, result.token_source) from None

    user = call("check the token (whoami)", api.whoami)
    user_name = str(user.get("name", ""))
    namespaces = {user_name} | {str(org.get("name")) for org in user.get("orgs") or [] if isinstance(org, dict)}
    if user_name and namespace not in namespaces:
        raise HubPushError(
            f"Cannot push to {repo_id}: the namespace {namespace!r} is neither your user ({user_name!r}) nor one of "
            f"your organisations ({', '.join(sorted(namespaces - {user_name})) or 'none'}). Push to "
            f"--repo_id {user_name}/{name}, or ask the owner of {namespace!r} for write access. Nothing was uploaded."
        )
    try:
        api.create_repo(repo_id, repo_type="model", private=result.private, exist_ok=False)
        result.created = True
        logger.info("Created %s (private=%s)", repo_id, result.private)
    except Exception as exc:
        # 409: the repo exists (in our namespace, checked above). 403: no right to create repos in the namespace,
        # which is fine when the repo exists and the token may write to it (as huggingface_hub's exist_ok=True).
        status = _status(exc) if isinstance(exc, HfHubHTTPError) else None
        exists = status == 409 or (
            status == 403 and call("check whether the repo exists", api.repo_exists, repo_id, repo_type="model")
        )
        if not exists:
            raise _explain(exc, "create the repo", repo_id, token, result.token_source) from None
        result.created = False
        result.notes.append(
            f"{repo_id} already exists: this push adds one commit to it (files with the same path are replaced, "
            "other files are kept)"
            + ("; --private applies only to new repos, its visibility is unchanged." if result.private else ".")
        )
    if result.revision and result.revision != "main":
        call(
            f"create the branch {result.revision!r}",
            api.create_branch,
            repo_id,
            branch=result.revision,
            repo_type="model",
            exist_ok=True,
        )
    info = call(
        "upload the folder",
        api.upload_folder,
        folder_path=str(staging),
        repo_id=repo_id,
        repo_type="model",
        revision=result.revision,
        commit_message=commit_message,
    )
    result.commit_url = str(getattr(info, "commit_url", "") or "") or None
    logger.info("Pushed %d files to %s", len(result.files), repo_id)


def add_to_hub_cache(
    folder: str | Path,
    repo_id: str,
    cache_dir: str | Path | None = None,
    revision: str = "main",
    commit_hash: str | None = None,
) -> Path:
    """Place ``folder`` in the Hub cache layout, as ``huggingface_hub`` would after downloading ``repo_id``.

    Layout: ``models--{org}--{name}/blobs/<sha256 for LFS-sized files, git sha1 for the others>``,
    ``snapshots/<commit>/<path>`` as relative symlinks to the blobs (copies where symlinks are not supported), and
    ``refs/<revision>`` holding the commit hash. ``SentenceTransformer(repo_id)`` then loads it with
    ``HF_HUB_OFFLINE=1`` (a machine without Hub access, or a test of what a push uploads).

    Args:
        folder: the files of the repo (e.g. what :func:`stage_upload` built).
        repo_id: ``namespace/name``.
        cache_dir: the hub cache (default ``huggingface_hub.constants.HF_HUB_CACHE``).
        revision: the ref to write.
        commit_hash: a 40-hex commit id (default: derived from the file hashes).

    Returns:
        The snapshot folder.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils.sha import git_hash

    folder = Path(folder)
    cache_dir = Path(cache_dir or constants.HF_HUB_CACHE)
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    files = list(_iter_files(folder))
    hashes = {}
    for path in files:
        data = path.read_bytes()
        is_lfs = path.suffix == ".safetensors" or len(data) > 10 * 1024 * 1024
        hashes[path] = hashlib.sha256(data).hexdigest() if is_lfs else git_hash(data)
    commit_hash = (
        commit_hash
        or hashlib.sha1(
            "".join(f"{p.relative_to(folder).as_posix()}:{h}\n" for p, h in sorted(hashes.items())).encode()
        ).hexdigest()
    )
    if len(commit_hash) != 40 or any(c not in "0123456789abcdef" for c in commit_hash):
        raise ValueError(f"commit_hash must be 40 lowercase hex digits, got {commit_hash!r}.")
    snapshot = repo_dir / "snapshots" / commit_hash
    for path, blob_hash in hashes.items():
        blob = repo_dir / "blobs" / blob_hash
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            target.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:
            shutil.copyfile(blob, target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit_hash, encoding="utf-8")
    return snapshot
