"""Local WordPiece tokenizer and tiny BERT folder going through the real Auto* loading path."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer

TEXTS = ["Mass in the upper outer quadrant.", "Calcifications, BI-RADS 4.", "mass mass calcification"] * 3


def test_trained_tokenizer_loads_with_autotokenizer(tmp_path: Path) -> None:
    train_wordpiece_tokenizer(TEXTS, tmp_path, vocab_size=200)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [
        0,
        1,
        2,
        3,
        4,
    ]
    ids = tok("MASS in Quadrant")["input_ids"]
    # [CLS] ... [SEP] around lowercased words that are whole entries of the learnt vocabulary.
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["mass", "in", "quadrant"]
    # An unseen word is split into known word pieces (or [UNK]), never dropped.
    assert len(tok("zebra")["input_ids"]) > 2
    batch = tok(["mass", "mass in the upper"], padding="max_length", max_length=8, truncation=True)
    assert batch["input_ids"][0][3:] == [0] * 5 and batch["attention_mask"][0] == [1, 1, 1, 0, 0, 0, 0, 0]


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one text"):
        train_wordpiece_tokenizer([], tmp_path)


def test_text_encoder_folder_loads_with_automodel(tmp_path: Path) -> None:
    tok = train_wordpiece_tokenizer(TEXTS, vocab_size=150)
    folder = build_text_encoder_folder(tmp_path / "bert", tok, hidden_size=16, layers=1, heads=2, seed=3)
    model = AutoModel.from_pretrained(str(folder))
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    assert model.config.vocab_size == len(tok)
    saved = load_file(str(folder / "model.safetensors"))
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    assert torch.equal(model.state_dict()[key.removeprefix("bert.")], saved[key])
    assert AutoTokenizer.from_pretrained(str(folder))("mass")["input_ids"] == tok("mass")["input_ids"]
    # Seeded: the same call builds the same weights.
    again = build_text_encoder_folder(tmp_path / "bert2", tok, hidden_size=16, layers=1, heads=2, seed=3)
    assert torch.equal(load_file(str(again / "model.safetensors"))[key], saved[key])
