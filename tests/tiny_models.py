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


# Encoder families rerankers and retrievers are built on, as tiny random configs. Every family reads the same
# WordPiece vocabulary (a model does not care which tokenizer produced its ids), so that the family's own attention
# (disentangled, relative-position, local/global, ...) is what a test exercises.
ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "mpnet", "distilbert", "modernbert")
DECODER_FAMILIES = ("qwen3",)


def _family_config(
    family: str, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int
):
    """A tiny transformers config of ``family`` (pad id 0, as in :func:`write_vocab`)."""
    from transformers import AutoConfig

    size = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                intermediate_size=hidden_size * 2, vocab_size=vocab_size, pad_token_id=0)  # fmt: skip
    if family == "distilbert":
        return AutoConfig.for_model("distilbert", vocab_size=vocab_size, dim=hidden_size, n_layers=num_layers,
                                    n_heads=num_heads, hidden_dim=hidden_size * 2, pad_token_id=0,
                                    max_position_embeddings=max_positions)  # fmt: skip
    extra: dict = {"max_position_embeddings": max_positions}
    if family in ("roberta", "xlm-roberta", "mpnet"):  # positions start after the padding index
        extra["max_position_embeddings"] = max_positions + 2
    if family == "deberta-v2":  # disentangled attention with relative positions, as in DeBERTa-v3
        extra.update(relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                     max_relative_positions=-1, position_buckets=32, norm_rel_ebd="layer_norm", share_att_key=True)  # fmt: skip
    if family == "modernbert":  # alternating local and global attention layers
        extra.update(global_attn_every_n_layers=2, local_attention=16, bos_token_id=2, eos_token_id=3, cls_token_id=2,
                     sep_token_id=3)  # fmt: skip
    if family == "electra":
        extra["embedding_size"] = hidden_size
    if family == "qwen3":
        extra.update(num_key_value_heads=num_heads, head_dim=hidden_size // num_heads, bos_token_id=2, eos_token_id=3,
                     tie_word_embeddings=True)  # fmt: skip
    return AutoConfig.for_model(family, **size, **extra)


def build_tiny_family(
    folder: str | Path,
    family: str,
    *,
    num_labels: int | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised model of ``family`` (one of :data:`ENCODER_FAMILIES` or
    :data:`DECODER_FAMILIES`) and a fast WordPiece tokenizer to ``folder``: a plain encoder, or with ``num_labels``
    a sequence classifier (a cross-encoder)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = write_vocab(folder / "vocab.txt")
    vocab = {token: i for i, token in enumerate(vocab_file.read_text(encoding="utf-8").split("\n")[:-1])}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_position_embeddings)
    config = _family_config(family, len(tokenizer), hidden_size, num_layers, num_heads, max_position_embeddings)
    torch.manual_seed(seed)
    if num_labels is None:
        model = AutoModel.from_config(config)
    else:
        config.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_family_student(folder: str | Path, family: str, **kwargs):
    """A SentenceTransformer on a tiny ``family`` backbone: mean pooling for encoders, last-token pooling for
    decoders, then normalisation; saved to ``folder / "model"`` and returned."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = Path(folder)
    backbone = build_tiny_family(folder / "backbone", family, **kwargs)
    transformer = Transformer(str(backbone), max_seq_length=64)
    mode = "lasttoken" if family in DECODER_FAMILIES else "mean"
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(folder / "model"))
    return SentenceTransformer(str(folder / "model"), device="cpu")
