"""Retrieval data in: TREC RAG 2024 (from the ``ir-axioms==1.2.5`` sdist) and any BEIR-layout folder.

Both loaders return a :class:`RetrievalData`: a corpus and queries as :class:`datasets.Dataset` (columns ``id``,
``text``) and graded qrels as ``{query_id: {doc_id: grade}}``.

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

import dataclasses
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

from md2pr_st.utils import atomic_path, sha256_file, write_json

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


@dataclasses.dataclass
class RetrievalData:
    """A retrieval test collection: corpus, queries and graded qrels.

    Args:
        corpus: :class:`datasets.Dataset` with columns ``id`` and ``text``.
        queries: :class:`datasets.Dataset` with columns ``id`` and ``text``.
        qrels: ``{query_id: {doc_id: grade}}`` with integer grades (0 = not relevant).
        name: a short name used in reports (``rag24-test``, a folder name, ...).

    Example:
        >>> from datasets import Dataset
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["d1", "d2"], "text": ["Paris is in France.", "Tea is a drink."]}),
        ...     queries=Dataset.from_dict({"id": ["q1"], "text": ["capital of france"]}),
        ...     qrels={"q1": {"d1": 3, "d2": 0}},
        ... )
        >>> data.relevant("q1", min_grade=2)
        ['d1']
    """

    corpus: Dataset
    queries: Dataset
    qrels: dict[str, dict[str, int]]
    name: str = "data"

    def __post_init__(self) -> None:
        validate_retrieval_data(self.corpus, self.queries, self.qrels, self.name)

    def relevant(self, query_id: str, min_grade: int = 2) -> list[str]:
        """Ids of the documents judged at ``grade >= min_grade`` for ``query_id``."""
        return [doc_id for doc_id, grade in self.qrels.get(query_id, {}).items() if grade >= min_grade]

    def subset(self, query_ids: Iterable[str], name: str | None = None) -> RetrievalData:
        """The same corpus with only ``query_ids`` (and their qrels)."""
        keep = set(query_ids)
        unknown = keep - set(self.queries["id"])
        if unknown:
            raise KeyError(f"{len(unknown)} query ids are not in {self.name!r}, e.g. {sorted(unknown)[:3]}")
        queries = self.queries.select([i for i, qid in enumerate(self.queries["id"]) if qid in keep])
        qrels = {qid: dict(docs) for qid, docs in self.qrels.items() if qid in keep}
        return RetrievalData(self.corpus, queries, qrels, name or self.name)

    def __repr__(self) -> str:
        n_judged = sum(len(docs) for docs in self.qrels.values())
        return (
            f"RetrievalData(name={self.name!r}, corpus={len(self.corpus):,} docs, "
            f"queries={len(self.queries):,}, qrels={n_judged:,} judgements)"
        )


def validate_retrieval_data(corpus: Dataset, queries: Dataset, qrels: dict, name: str = "data") -> None:
    """Raise a :class:`ValueError` that says what is wrong with a corpus / queries / qrels triple."""
    for label, table in (("corpus", corpus), ("queries", queries)):
        missing = {"id", "text"} - set(table.column_names)
        if missing:
            raise ValueError(
                f"{name}: the {label} needs columns 'id' and 'text'; it lacks {sorted(missing)} "
                f"(it has {table.column_names}). Rename your columns, e.g. dataset.rename_column('_id', 'id')."
            )
        if len(table) == 0:
            raise ValueError(f"{name}: the {label} is empty; retrieval needs at least one {label[:-1]}.")
        ids = table["id"]
        if len(set(ids)) != len(ids):
            seen, dups = set(), []
            for i in ids:
                if i in seen:
                    dups.append(i)
                seen.add(i)
            raise ValueError(
                f"{name}: {len(dups)} duplicate ids in the {label}, e.g. {dups[:3]}. Ids must be unique; "
                "merge or rename the duplicates."
            )
        bad = [i for i, text in zip(ids, table["text"]) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise ValueError(
                f"{name}: {len(bad)} {label} entries have an empty or missing text, e.g. ids {bad[:3]}. "
                "Drop them or fill in their text."
            )
    query_ids = set(queries["id"])
    without = sorted(query_ids - set(qrels))
    if without:
        raise ValueError(
            f"{name}: {len(without)} queries have no qrels, e.g. {without[:3]}. Every query needs at least one "
            "judged document; drop the queries without judgements (data.subset(...)) or add their qrels."
        )
    extra = sorted(set(qrels) - query_ids)
    if extra:
        raise ValueError(
            f"{name}: the qrels name {len(extra)} queries that are not in the queries, e.g. {extra[:3]}. "
            "Pass the matching queries file or drop those qrels."
        )
    doc_ids = set(corpus["id"])
    unknown_docs = sorted({d for docs in qrels.values() for d in docs} - doc_ids)
    if unknown_docs:
        raise ValueError(
            f"{name}: the qrels judge {len(unknown_docs)} documents that are not in the corpus, e.g. "
            f"{unknown_docs[:3]}. Restrict the qrels to the corpus or add those documents."
        )


# --------------------------------------------------------------------------------------------------------------
# TREC RAG 2024 from the ir-axioms sdist
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$MD2PR_CACHE`` if set, else ``~/.cache/md2pr_st``."""
    return Path(os.environ.get("MD2PR_CACHE", Path.home() / ".cache" / "md2pr_st")).expanduser()


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
    with atomic_path(cache, is_dir=True) as tmp:
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


# --------------------------------------------------------------------------------------------------------------
# BEIR layout
# --------------------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path, kind: str) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no} is not valid JSON ({exc.msg}).") from exc
            if "_id" not in row:
                raise ValueError(f"{path}:{line_no}: each {kind} line needs an '_id' field (BEIR layout).")
            title = (row.get("title") or "").strip()
            text = row.get("text")
            ids.append(str(row["_id"]))
            texts.append(f"{title} {text}".strip() if title and isinstance(text, str) else text)
    return ids, texts


def load_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """Load a folder in the BEIR layout: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

    ``corpus.jsonl`` lines are ``{"_id": ..., "title": ..., "text": ...}`` (title optional, prepended to the
    text), ``queries.jsonl`` lines ``{"_id": ..., "text": ...}``, and ``qrels/{split}.tsv`` has a header and
    the columns ``query-id``, ``corpus-id``, ``score`` (an integer grade). Only the queries that appear in the
    split's qrels are kept, as BEIR does.

    Example:
        >>> import json, pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "Paris"}) + "\\n")
        >>> _ = (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "capital of France"}) + "\\n")
        >>> (folder / "qrels").mkdir()
        >>> _ = (folder / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
        >>> load_beir(folder).qrels
        {'q1': {'d1': 1}}
    """
    folder = Path(folder)
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl"}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not in the BEIR layout: {path.name} is missing (expected corpus.jsonl, "
                f"queries.jsonl and qrels/{split}.tsv)."
            )
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise FileNotFoundError(
            f"No qrels for split {split!r}: {qrels_path} is missing. Splits found in {folder / 'qrels'}: "
            f"{available or 'none'}."
        )
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if line_no == 1 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) != 3:
                raise ValueError(f"{qrels_path}:{line_no}: expected 3 tab-separated columns, got {len(parts)}.")
            query_id, doc_id, grade = parts
            try:
                qrels.setdefault(query_id, {})[doc_id] = int(grade)
            except ValueError as exc:
                raise ValueError(f"{qrels_path}:{line_no}: the score {grade!r} is not an integer grade.") from exc
    corpus_ids, corpus_texts = _read_jsonl(paths["corpus"], "corpus")
    query_ids, query_texts = _read_jsonl(paths["queries"], "query")
    keep = [i for i, qid in enumerate(query_ids) if qid in qrels]
    queries = Dataset.from_dict({"id": [query_ids[i] for i in keep], "text": [query_texts[i] for i in keep]})
    corpus = Dataset.from_dict({"id": corpus_ids, "text": corpus_texts})
    return RetrievalData(corpus, queries, qrels, name=f"{folder.name}-{split}")


def load_retrieval_data(dataset: str, split: str = "test", **kwargs) -> RetrievalData:
    """``"rag24"`` (with ``qrels=``, ``cache_dir=``, ``sdist_path=``, ``seed=``) or a BEIR-layout folder."""
    if dataset in ("rag24", "rag24-umbrela", "rag24-nist"):
        if dataset == "rag24-nist":
            kwargs.setdefault("qrels", "nist")
        return load_rag24(split, **kwargs)
    if Path(dataset).is_dir():
        return load_beir(dataset, split)
    raise ValueError(
        f"Unknown dataset {dataset!r}: pass 'rag24' (TREC RAG 2024, downloaded from PyPI), 'rag24-nist', or a "
        "folder in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."
    )
