"""TREC RAG 2024 from the ``ir-axioms==1.2.5`` sdist, as a :class:`~md2pr_st.data.RetrievalData`.

TREC RAG 2024 as shipped in the ``ir-axioms`` sdist:

- ``data/crowd/study1_retrieval.jsonl.gz``: 301 topics, each with its top-20 pooled passages and their texts; the
  6,011 unique passages are the corpus.
- ``data/qrels.rag24.test-umbrela-all.txt``: UMBRELA (LLM) grades 0-3 for all pooled pairs of all 301 topics
  (the default qrels, ``qrels="umbrela"``).
- ``data/2024-retrieval-qrels.txt``: NIST assessors' grades 0-3 for 86 topics (``qrels="nist"``).

Qrels are restricted to passages in the corpus (a judged passage that is not in the corpus cannot be retrieved,
so it would only lower recall for every system alike).

Split (by topic, so no query is in two splits): each topic id is ranked by ``sha256(f"{seed}:{topic_id}")`` and
the ranking is cut into train / dev / test at 60% / 20% / 20% (181 / 60 / 60 topics with the default seed 13).
The rule needs no random number generator, so it gives the same split on every platform and library version.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from md2pr_st.data.retrieval_data import RetrievalData
from md2pr_st.utils import atomic_path, default_cache_dir, sha256_file, write_json

logger = logging.getLogger(__name__)

RAG24_PACKAGE = "ir-axioms==1.2.5"
RAG24_SDIST_NAME = "ir_axioms-1.2.5.tar.gz"
RAG24_SDIST_SHA256 = "cbb90f78a9de4260619ca6e67c0204e56e0a0155e0d77e80856a2fe4a1af15a5"
RAG24_MEMBERS = {
    "retrieval": "ir_axioms-1.2.5/data/crowd/study1_retrieval.jsonl.gz",
    "umbrela": "ir_axioms-1.2.5/data/qrels.rag24.test-umbrela-all.txt",
    "nist": "ir_axioms-1.2.5/data/2024-retrieval-qrels.txt",
}
QRELS_SETS = ("umbrela", "nist")
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = {"train": 0.6, "dev": 0.2, "test": 0.2}
DEFAULT_SPLIT_SEED = 13
# Bump when the parsed layout changes, so that old caches are rebuilt instead of misread.
_CACHE_FORMAT = 1


def fetch_rag24_sdist(cache_dir: str | Path | None = None, sdist_path: str | Path | None = None) -> Path:
    """Return the path of a verified ``ir_axioms-1.2.5.tar.gz``, downloading it with pip if needed.

    Args:
        cache_dir: folder for the tarball (default :func:`default_cache_dir`).
        sdist_path: an already downloaded tarball (also read from ``$MD2PR_RAG24_SDIST``); it is verified
            against the expected sha256, not copied.

    Raises:
        RuntimeError: when pip cannot download the sdist (for example without access to the package
            registry); the message says how to pass a local tarball instead.
        ValueError: when the tarball's sha256 differs from the expected one.
    """
    sdist_path = sdist_path or os.environ.get("MD2PR_RAG24_SDIST")
    if sdist_path:
        path = Path(sdist_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"The RAG24 sdist {path} does not exist (from sdist_path / $MD2PR_RAG24_SDIST).")
        _verify_sdist(path)
        return path
    folder = Path(cache_dir or default_cache_dir()) / "downloads"
    path = folder / RAG24_SDIST_NAME
    if path.is_file():
        try:
            _verify_sdist(path)
            return path
        except ValueError:
            logger.warning("Cached %s is corrupt (sha256 mismatch); downloading it again.", path)
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ".download", is_dir=True) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", RAG24_PACKAGE, "-d"]
        logger.info("Downloading the %s sdist (28 MB) with pip into %s", RAG24_PACKAGE, folder)
        proc = subprocess.run(cmd + [str(tmp)], capture_output=True, text=True)
        downloaded = tmp / RAG24_SDIST_NAME
        if proc.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise RuntimeError(
                f"pip could not download the {RAG24_PACKAGE} sdist, which holds the TREC RAG 2024 data "
                f"(is the package registry reachable?). pip said:\n{tail}\n"
                "Fix: on a machine with registry access run "
                f"`python -m pip download --no-deps --no-binary :all: {RAG24_PACKAGE} -d DIR`, copy "
                f"DIR/{RAG24_SDIST_NAME} here and pass it with `--sdist PATH` (CLI), `sdist_path=PATH` (Python) "
                "or the environment variable MD2PR_RAG24_SDIST=PATH."
            )
        _verify_sdist(downloaded)
        os.replace(downloaded, path)
    return path


def _verify_sdist(path: Path) -> None:
    digest = sha256_file(path)
    if digest != RAG24_SDIST_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {RAG24_SDIST_SHA256} for {RAG24_SDIST_NAME}. The file is corrupt "
            "or another version; delete it and let md2pr download it again, or pass the right tarball."
        )


def parse_rag24_sdist(sdist: str | Path) -> DatasetDict:
    """Parse the RAG24 members of the ``ir-axioms`` sdist into a :class:`datasets.DatasetDict`.

    Splits of the result: ``corpus`` (id, text), ``queries`` (id, text), ``qrels_umbrela`` and ``qrels_nist``
    (query_id, doc_id, grade), the qrels restricted to the corpus.
    """
    with tarfile.open(sdist, "r:gz") as tar:

        def read(member: str) -> bytes:
            try:
                handle = tar.extractfile(member)
            except KeyError as exc:
                raise ValueError(f"{sdist} does not contain {member}: not the ir-axioms 1.2.5 sdist?") from exc
            return handle.read()

        rows = [json.loads(line) for line in gzip.decompress(read(RAG24_MEMBERS["retrieval"])).splitlines() if line]
        qrels_text = {name: read(RAG24_MEMBERS[name]).decode("utf-8") for name in QRELS_SETS}

    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    for row in rows:
        queries[row["topic"]] = row["query"]
        for doc_id, text in zip(row["references_ids"], row["references_texts"], strict=True):
            if corpus.setdefault(doc_id, text) != text:
                raise ValueError(f"Passage {doc_id} has two different texts in {sdist}.")
    out = {
        "corpus": Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
        "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
    }
    for name, text in qrels_text.items():
        table = {"query_id": [], "doc_id": [], "grade": []}
        for line in text.splitlines():
            if not line.strip():
                continue
            query_id, _, doc_id, grade = line.split()
            if doc_id in corpus and query_id in queries:
                table["query_id"].append(query_id)
                table["doc_id"].append(doc_id)
                table["grade"].append(int(grade))
        out[f"qrels_{name}"] = Dataset.from_dict(table)
    return DatasetDict(out)


def rag24_dataset_dict(cache_dir: str | Path | None = None, sdist_path: str | Path | None = None) -> DatasetDict:
    """The parsed RAG24 :class:`~datasets.DatasetDict`, cached on disk after the first call.

    The cache lives in ``cache_dir / "rag24"`` (default :func:`default_cache_dir`) and is written atomically;
    a cache that cannot be read is rebuilt from the tarball.
    """
    cache = Path(cache_dir or default_cache_dir()) / "rag24"
    manifest = cache / "md2pr_manifest.json"
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("format") == _CACHE_FORMAT and meta.get("sdist_sha256") == RAG24_SDIST_SHA256:
                return load_from_disk(str(cache / "data"))
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            logger.warning("The RAG24 cache in %s is unreadable (%s); rebuilding it.", cache, exc)
    sdist = fetch_rag24_sdist(cache_dir, sdist_path)
    data = parse_rag24_sdist(sdist)
    with atomic_path(cache, is_dir=True, kind="data") as tmp:
        data.save_to_disk(str(tmp / "data"))
        write_json(tmp / "md2pr_manifest.json", {"format": _CACHE_FORMAT, "sdist_sha256": RAG24_SDIST_SHA256})
    return load_from_disk(str(cache / "data"))


def split_topics(topic_ids: Iterable[str], seed: int = DEFAULT_SPLIT_SEED) -> dict[str, list[str]]:
    """Split topic ids into train / dev / test (60 / 20 / 20) by ranking ``sha256(f"{seed}:{id}")``.

    Example:
        >>> splits = split_topics([f"t{i}" for i in range(10)])
        >>> {name: len(ids) for name, ids in splits.items()}
        {'train': 6, 'dev': 2, 'test': 2}
        >>> sorted(sum(splits.values(), [])) == sorted(f"t{i}" for i in range(10))
        True
    """
    ranked = sorted(set(topic_ids), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n_test = round(len(ranked) * SPLIT_FRACTIONS["test"])
    n_dev = round(len(ranked) * SPLIT_FRACTIONS["dev"])
    n_train = len(ranked) - n_dev - n_test
    return {
        "train": ranked[:n_train],
        "dev": ranked[n_train : n_train + n_dev],
        "test": ranked[n_train + n_dev :],
    }


def load_rag24(
    split: str = "all",
    qrels: str = "umbrela",
    cache_dir: str | Path | None = None,
    sdist_path: str | Path | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
) -> RetrievalData:
    """Load TREC RAG 2024 (6,011 passages, 301 topics) with graded qrels.

    Args:
        split: ``"train"``, ``"dev"``, ``"test"`` (see :func:`split_topics`) or ``"all"``.
        qrels: ``"umbrela"`` (LLM grades for all 301 topics) or ``"nist"`` (human grades, 86 topics; the
            queries are then restricted to those topics).
        cache_dir: where the tarball and the parsed ``datasets`` live (default ``$MD2PR_CACHE`` or
            ``~/.cache/md2pr_st``).
        sdist_path: a local ``ir_axioms-1.2.5.tar.gz`` to use instead of downloading it with pip.
        seed: the split seed.

    Example:
        >>> data = load_rag24("test")
        >>> data
        RetrievalData(name='rag24-test', corpus=6,011 docs, queries=60, qrels=1,245 judgements)
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)} or 'all'.")
    if qrels not in QRELS_SETS:
        raise ValueError(f"Unknown qrels set {qrels!r}; choose 'umbrela' (all 301 topics) or 'nist' (86 topics).")
    dd = rag24_dataset_dict(cache_dir, sdist_path)
    table = dd[f"qrels_{qrels}"]
    graded: dict[str, dict[str, int]] = {}
    for query_id, doc_id, grade in zip(table["query_id"], table["doc_id"], table["grade"]):
        graded.setdefault(query_id, {})[doc_id] = grade
    all_ids = dd["queries"]["id"]
    keep = set(all_ids) if split == "all" else set(split_topics(all_ids, seed)[split])
    keep &= set(graded)
    queries = dd["queries"].select([i for i, qid in enumerate(all_ids) if qid in keep])
    name = "rag24" if split == "all" else f"rag24-{split}"
    if qrels != "umbrela":
        name += f"-{qrels}"
    return RetrievalData(dd["corpus"], queries, {q: graded[q] for q in queries["id"]}, name)
