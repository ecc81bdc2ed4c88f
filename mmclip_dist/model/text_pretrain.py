"""Masked-language-model pretraining of a small BERT on report text (the debug stand-in for Bio_ClinicalBERT).

MM-CLIP starts from a *pretrained* clinical BERT. A randomly initialised BERT is a poor stand-in: its
attention is near uniform, so its [CLS] output hardly depends on the input and every report embeds to
almost the same vector, which leaves contrastive training nothing to align (measured: cosine 0.999
between different reports). A few hundred MLM steps on the report corpus give the debug encoder what
the real one brings — token representations that depend on the text — in seconds on a CPU.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling


def pretrain_mlm(
    folder: str | Path,
    texts: Sequence[str],
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    max_length: int = 128,
    seed: int = 0,
) -> float:
    """Train the BERT saved in ``folder`` with MLM on ``texts`` and save it back; returns the final loss."""
    folder = Path(folder)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForMaskedLM.from_pretrained(folder)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    unique = sorted(set(texts))  # template reports repeat; duplicates add no signal
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        chunk = [unique[rng.randrange(len(unique))] for _ in range(batch_size)]
        encoded = tokenizer(chunk, truncation=True, max_length=max_length)
        batch = collator([{"input_ids": ids} for ids in encoded["input_ids"]])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    # Save only the encoder (what AutoModel.from_pretrained loads), the MLM head is not used downstream.
    model.bert.save_pretrained(folder)
    return float(loss)
