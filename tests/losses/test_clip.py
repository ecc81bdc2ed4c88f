"""Global CLIP loss (Eq. 6): hand values, rows with global targets, streamed == materialised."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmclip_dist.losses.clip import clip_loss_naive, clip_rows, row_cross_entropy


def test_hand_computed_two_by_two() -> None:
    eye = torch.eye(2)
    scale = torch.tensor(2.0)
    # logits [[2, 0], [0, 2]]: each row CE = log(1 + e^-2); Eq. 6 sums both directions.
    per_dir = math.log(1 + math.exp(-2))
    rows = clip_rows(eye, eye, eye, eye, scale, torch.arange(2))
    assert torch.allclose(rows, torch.full((2,), 2 * per_dir))
    assert math.isclose(float(clip_loss_naive(eye, eye, scale)), 2 * per_dir, rel_tol=1e-6)


def test_asymmetric_directions_hand_computed() -> None:
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = [[1, 0], [1, 0]]; i2t CE: row0 log(1+e^-1), row1 log(1+e^1);
    # t2i (logits.T = [[1, 1], [0, 0]]): both rows log 2.
    rows = clip_rows(img, txt, img, txt, torch.tensor(1.0), torch.arange(2))
    expected = torch.tensor([math.log(1 + math.exp(-1)) + math.log(2), math.log(1 + math.e) + math.log(2)])
    assert torch.allclose(rows, expected)


def test_local_rows_with_global_targets_equal_the_full_matrix_rows() -> None:
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1), F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    scale = torch.tensor(5.0)
    full = clip_rows(img, txt, img, txt, scale, torch.arange(6))
    # "Rank 1 of 2": rows 3..5 against all columns.
    part = clip_rows(img[3:], txt[3:], img, txt, scale, torch.arange(3) + 3)
    assert torch.allclose(part, full[3:])
    assert torch.allclose(full.mean(), clip_loss_naive(img, txt, scale))


@pytest.mark.parametrize("chunk", [1, 4, 37, 100])
def test_streamed_equals_materialised_in_value_and_gradient(chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    q0 = F.normalize(torch.randn(37, 8, generator=g, dtype=torch.float64), dim=-1)
    k0 = F.normalize(torch.randn(50, 8, generator=g, dtype=torch.float64), dim=-1)
    targets = torch.randint(0, 50, (37,), generator=g)
    weights = torch.rand(37, generator=g, dtype=torch.float64)

    def run(chunk_size: int):
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        s = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
        ce = row_cross_entropy(q, k, s, targets, chunk_size)
        (ce * weights).sum().backward()
        return ce.detach(), q.grad, k.grad, s.grad

    naive, streamed = run(0), run(chunk)
    for a, b in zip(naive, streamed):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_streamed_function_passes_gradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 6, 2, 2, 4])
    assert torch.autograd.gradcheck(lambda a, b, c: row_cross_entropy(a, b, c, targets, 2), (q, k, s))
