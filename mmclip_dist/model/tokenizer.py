"""A locally trained WordPiece tokenizer and a tiny randomly initialised BERT folder.

The debug mode and the tests cannot download Bio_ClinicalBERT, but the training code must still go
through the real ``AutoTokenizer.from_pretrained`` / ``AutoModel.from_pretrained`` path. So we train
a BERT-style WordPiece vocabulary on the (synthetic) reports with the ``tokenizers`` library and save
a small ``BertModel`` next to it: ``model.text_encoder: <that folder>`` then behaves like a hub id.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmclip_dist.config import ModelConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(
    texts: Iterable[str], out_dir: str | Path | None = None, vocab_size: int = 2000, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a lowercasing BERT WordPiece tokenizer on ``texts``; save it to ``out_dir`` when given.

    The saved folder loads with ``AutoTokenizer.from_pretrained(out_dir)`` and adds ``[CLS] ... [SEP]``.
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    texts = list(texts)
    if not texts:
        raise ValueError("train_wordpiece_tokenizer needs at least one text")
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def build_text_encoder_folder(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``BertModel`` (vocabulary of ``tokenizer``) plus the tokenizer to ``out_dir``."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seeded so the same call gives the same "pretrained" encoder on every rank and every run.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # With the pooler, like a real BERT checkpoint; MM-CLIP drops it after loading (text.py).
        model = BertModel(config)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of the configured text encoder (``cfg.tokenizer`` or, if empty, ``cfg.text_encoder``)."""
    return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.text_encoder)
