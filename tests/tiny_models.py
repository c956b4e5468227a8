"""Tiny random BERT models written to a folder, so unit tests run fast and offline."""

from __future__ import annotations

import string
from pathlib import Path

WORDS = (
    "the a an of to in is are was for on with and or not what how why who when where which does do can "
    "python snake java coffee island tea cat dog paris france capital city river sea ocean trauma cope "
    "retrieval dense passage query document teacher student model score rank search index vector"
).split()


def write_vocab(path: Path, extra_words: tuple[str, ...] = (), cased: bool = False) -> Path:
    """A WordPiece vocabulary that can spell any lowercase ASCII text (characters plus ## continuations); with
    ``cased``, any ASCII text (upper-case letters too)."""
    letters = string.ascii_letters if cased else string.ascii_lowercase
    chars = list(letters + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + ["##" + c for c in letters + string.digits]
    vocab += [w for w in dict.fromkeys(WORDS + list(extra_words)) if w not in vocab]
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def build_tiny_bert(
    folder: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 128,
    seed: int = 0,
    num_labels: int | None = None,
    extra_words: tuple[str, ...] = (),
    cased: bool = False,
) -> Path:
    """Write a randomly initialised BERT (and its fast tokenizer) to ``folder``.

    ``num_labels=None`` writes a plain encoder (for a SentenceTransformer), ``num_labels=1`` a sequence
    classifier (for a CrossEncoder).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = write_vocab(folder / "vocab.txt", extra_words, cased)
    vocab = {token: i for i, token in enumerate(vocab_file.read_text(encoding="utf-8").split("\n")[:-1])}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=not cased, model_max_length=max_position_embeddings)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    if num_labels is None:
        model = BertModel(config)
    else:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sentence_transformer(folder: str | Path, **kwargs):
    """A SentenceTransformer (tiny BERT + mean pooling + normalize) saved to ``folder`` and returned."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = Path(folder)
    backbone = build_tiny_bert(folder / "backbone", **kwargs)
    transformer = Transformer(str(backbone), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(folder / "model"))
    return SentenceTransformer(str(folder / "model"), device="cpu")


def build_tiny_char_bert(folder: str | Path, **kwargs) -> Path:
    """Like :func:`build_tiny_bert`, but its tokenizer knows no whole words: every word splits into characters
    (``python`` -> ``p ##y ##t ##h ##o ##n``). A second, differently-split vocabulary for alignment tests."""
    from transformers import BertTokenizerFast

    folder = build_tiny_bert(folder, **kwargs)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + chars
        + ["##" + c for c in string.ascii_lowercase + string.digits]
    )
    for name in ("vocab.txt", "tokenizer.json"):
        (folder / name).unlink(missing_ok=True)
    tokenizer = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=True,
        model_max_length=kwargs.get("max_position_embeddings", 128),
    )
    tokenizer.save_pretrained(folder)
    return folder


def build_byte_level_bpe_tokenizer(folder: str | Path, texts: list[str] | None = None):
    """A small byte-level BPE tokenizer (GPT-2/RoBERTa style: case-sensitive, spaces kept with the next word)
    trained on ``texts``, saved to ``folder`` and returned as a ``PreTrainedTokenizerFast``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = texts or [" ".join(WORDS)] * 4
    bpe = ByteLevelBPETokenizer(trim_offsets=True)
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=2, special_tokens=["<s>", "</s>", "<pad>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    return tokenizer
