"""Any retrieval collection in the BEIR layout, as a :class:`~md2pr_st.data.RetrievalData`.

::

    folder/
      corpus.jsonl      {"_id": "d1", "title": "optional", "text": "passage text"}
      queries.jsonl     {"_id": "q1", "text": "query text"}
      qrels/test.tsv    query-id<TAB>corpus-id<TAB>score   (header line; integer grades)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset

from md2pr_st.data.pairs import load_rows
from md2pr_st.data.retrieval_data import MAX_GRADE, MIN_GRADE, RetrievalData

logger = logging.getLogger(__name__)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; a byte that is not UTF-8 is an error naming the file and line."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path}:{line_no}: byte {raw[exc.start]:#04x} at column {exc.start + 1} is not UTF-8. Save the "
                    "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
                ) from None


def _read_jsonl(path: Path, kind: str) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no} is not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise ValueError(
                f'{path}:{line_no}: each line must be a JSON object like {{"_id": ..., "text": ...}}, got a '
                f"{type(row).__name__} ({line.strip()[:40]!r})."
            )
        if "_id" not in row or not isinstance(row["_id"], (str, int)) or isinstance(row["_id"], bool):
            raise ValueError(f"{path}:{line_no}: each {kind} line needs an '_id' field, a string (BEIR layout).")
        for field in ("title", "text"):
            value = row.get(field)
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"{path}:{line_no}: {field!r} must be a string, got {type(value).__name__} {str(value)[:40]}. "
                    "Quote it in the file."
                )
        title = (row.get("title") or "").strip()
        text = row.get("text")
        ids.append(str(row["_id"]))
        texts.append(f"{title} {text}".strip() if title and isinstance(text, str) else text)
    return ids, texts


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``{query: {doc: grade}}`` of a BEIR qrels file: an exact duplicate line is reported, a pair graded twice
    differently is an error (which grade is right cannot be guessed)."""
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    duplicates = []
    for line_no, line in _lines(path):
        parts = line.rstrip("\r\n").split("\t")
        if line_no == 1 and not parts[-1].strip().lstrip("-").isdigit():
            continue  # header
        if not line.strip():
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{line_no}: expected 3 tab-separated columns, got {len(parts)}.")
        query_id, doc_id, text = parts
        try:
            grade = int(text)
        except ValueError:
            raise ValueError(f"{path}:{line_no}: the score {text!r} is not an integer grade.") from None
        if not MIN_GRADE <= grade <= MAX_GRADE:
            raise ValueError(f"{path}:{line_no}: the grade {text} is out of range; grades are small integers (0-3).")
        known = qrels.setdefault(query_id, {}).get(doc_id)
        if known is not None:
            if known != grade:
                raise ValueError(
                    f"{path}:{line_no}: ({query_id}, {doc_id}) is graded {grade} here but {known} at line "
                    f"{first_line[(query_id, doc_id)]}. Keep one line per pair."
                )
            duplicates.append(line_no)
            continue
        qrels[query_id][doc_id] = grade
        first_line[(query_id, doc_id)] = line_no
    if duplicates:
        logger.warning(
            "%s: %d duplicate lines (same query, document and grade), e.g. line %d; each pair counts once.",
            path,
            len(duplicates),
            duplicates[0],
        )
    return qrels


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
    qrels = _read_qrels(qrels_path)
    corpus_ids, corpus_texts = _read_jsonl(paths["corpus"], "corpus")
    query_ids, query_texts = _read_jsonl(paths["queries"], "query")
    keep = [i for i, qid in enumerate(query_ids) if qid in qrels]
    queries = Dataset.from_dict({"id": [query_ids[i] for i in keep], "text": [query_texts[i] for i in keep]})
    corpus = Dataset.from_dict({"id": corpus_ids, "text": corpus_texts})
    return RetrievalData(corpus, queries, qrels, name=f"{folder.name}-{split}")


def load_corpus(path: str | Path, option: str = "--corpus") -> Dataset:
    """A corpus ``Dataset`` (``id``, ``text``) from a BEIR folder (its ``corpus.jsonl``) or a ``datasets`` folder."""
    folder = Path(path)
    if (folder / "corpus.jsonl").is_file():
        ids, texts = _read_jsonl(folder / "corpus.jsonl", "corpus")
        return Dataset.from_dict({"id": ids, "text": texts})
    if folder.is_dir():
        return load_rows(folder, option, "Give a `datasets` folder with id/text columns or a BEIR folder.")
    raise FileNotFoundError(f"The corpus {path} is neither a `datasets` folder nor a BEIR folder with corpus.jsonl.")
