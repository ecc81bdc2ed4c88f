"""Text encoder (Eq. 3): real from_pretrained of a local folder, pooling, shared projection."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from mmclip_dist.model.text import TextEncoder


def test_loads_saved_weights_from_local_folder(text_folder: Path) -> None:
    enc = TextEncoder.from_name(str(text_folder), embed_dim=8, roi_dim=6)
    saved = load_file(str(text_folder / "model.safetensors"))
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    assert torch.equal(enc.backbone.state_dict()[key.removeprefix("bert.")], saved[key])
    assert enc.backbone.pooler is None  # unused, dropped so no parameter is left without a gradient


def test_cls_pooling_and_shapes(text_folder: Path) -> None:
    enc = TextEncoder.from_name(str(text_folder), embed_dim=8, roi_dim=6, pooling="cls").eval()
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        feat, tokens = enc(ids, mask)
        hidden = enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert feat.shape == (2, 8) and tokens.shape == (2, 5, 6)
    assert torch.allclose(feat, enc.proj(hidden[:, 0]), atol=1e-6)
    assert torch.allclose(tokens, enc.token_proj(hidden), atol=1e-6)


def test_mean_pooling_ignores_padding(text_folder: Path) -> None:
    enc = TextEncoder.from_name(str(text_folder), embed_dim=8, roi_dim=6, pooling="mean").eval()
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        a, _ = enc(torch.tensor([[2, 7, 3, 0, 0]]), mask)
        b, _ = enc(torch.tensor([[2, 7, 3, 9, 11]]), mask)  # different ids under the padding
        hidden = enc.backbone(input_ids=torch.tensor([[2, 7, 3]]), attention_mask=torch.ones(1, 3)).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, enc.proj(hidden.mean(1)), atol=1e-5)
