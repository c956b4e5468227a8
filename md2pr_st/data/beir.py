"""Any retrieval collection in the BEIR layout, as a :class:`~md2pr_st.data.RetrievalData`.

::

    folder/
      corpus.jsonl      {"_id": "d1", "title": "optional", "text": "passage text"}
      queries.jsonl     {"_id": "q1", "text": "query text"}
      qrels/test.tsv    query-id<TAB>corpus-id<TAB>score   (header line; integer grades)
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from md2pr_st.data.retrieval_data import RetrievalData


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


def load_corpus(path: str | Path) -> Dataset:
    """A corpus ``Dataset`` (``id``, ``text``) from a BEIR folder (its ``corpus.jsonl``) or a ``datasets`` folder."""
    from datasets import load_from_disk

    folder = Path(path)
    if (folder / "corpus.jsonl").is_file():
        ids, texts = _read_jsonl(folder / "corpus.jsonl", "corpus")
        return Dataset.from_dict({"id": ids, "text": texts})
    if folder.is_dir():
        return load_from_disk(str(folder))
    raise FileNotFoundError(f"The corpus {path} is neither a `datasets` folder nor a BEIR folder with corpus.jsonl.")
