"""Peak memory and time of the global CLIP loss (+ backward) and of RoI matching, on CPU.

    python bench/loss_memory.py                       # full table (65,536 x 512 streamed; slow on 2 cores)
    python bench/loss_memory.py --clip-n 4096 16384 --streamed-n 65536 --roi-n 16 64 128

Every measurement runs in a fresh process so its peak RSS (``ru_maxrss``) is its own; the table shows
the peak above the baseline of that process after its inputs were allocated (what the loss itself
costs), and the baseline. The naive loss materialises the ``[N, N]`` logits (and autograd keeps the
softmax), so it is only run where that fits; the streamed ``ChunkedRowCrossEntropy`` keeps
``O(chunk x N)``. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _clip_case(kind: str, n: int, dim: int, chunk: int, queue: mp.Queue) -> None:
    import torch
    import torch.nn.functional as F

    from mmclip_dist.losses.clip import clip_loss_naive, clip_rows

    torch.manual_seed(0)
    img = F.normalize(torch.randn(n, dim), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(n, dim), dim=-1).requires_grad_(True)
    scale = torch.tensor(14.3, requires_grad=True)
    # Touch the gradient buffers' worth of memory up front so the baseline includes inputs + grads.
    base_grads = (torch.zeros_like(img), torch.zeros_like(txt))
    baseline = _rss_mib()
    start = time.perf_counter()
    if kind == "naive":
        loss = clip_loss_naive(img, txt, scale)
    else:
        targets = torch.arange(n)
        loss = clip_rows(img, txt, img, txt, scale, targets, chunk).mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    del base_grads
    queue.put(
        dict(
            case=f"CLIP {kind}",
            n=n,
            dim=dim,
            chunk=chunk if kind == "streamed" else "-",
            seconds=elapsed,
            baseline_mib=baseline,
            peak_extra_mib=_rss_mib() - baseline,
            loss=float(loss.detach()),
        )
    )


def _roi_case(n: int, rois: int, length: int, dim: int, heads: int, chunk: int, queue: mp.Queue) -> None:
    import torch

    from mmclip_dist.model.matching import RoIMatcher

    torch.manual_seed(0)
    matcher = RoIMatcher(dim, heads)
    roi = torch.randn(n, rois, dim, requires_grad=True)
    valid = torch.ones(n, rois, dtype=torch.bool)
    tok = torch.randn(n, length, dim, requires_grad=True)
    mask = torch.ones(n, length, dtype=torch.bool)
    baseline = _rss_mib()
    start = time.perf_counter()
    scores = matcher(roi, valid, tok, mask, chunk_size=chunk, use_checkpoint=True)
    scores.logsumexp(1).sum().backward()
    elapsed = time.perf_counter() - start
    queue.put(
        dict(
            case="RoI matching",
            n=n,
            dim=dim,
            chunk=chunk,
            seconds=elapsed,
            baseline_mib=baseline,
            peak_extra_mib=_rss_mib() - baseline,
            loss=float("nan"),
        )
    )


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024, help="rows per block of the streamed loss")
    parser.add_argument("--clip-n", type=int, nargs="*", default=[4096, 16384], help="N for naive AND streamed")
    parser.add_argument("--streamed-n", type=int, nargs="*", default=[65536], help="N for the streamed loss only")
    parser.add_argument(
        "--roi-n", type=int, nargs="*", default=[16, 64, 128, 256], help="global batch for RoI matching"
    )
    parser.add_argument("--roi-dim", type=int, default=256)
    parser.add_argument("--roi-heads", type=int, default=8)
    parser.add_argument("--rois", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--roi-chunk", type=int, default=64)
    args = parser.parse_args(argv)

    rows = []
    for n in args.clip_n:
        for kind in ("naive", "streamed"):
            rows.append(_run(_clip_case, kind, n, args.dim, args.chunk))
            print(rows[-1], flush=True)
    for n in args.streamed_n:
        rows.append(_run(_clip_case, "streamed", n, args.dim, args.chunk))
        print(rows[-1], flush=True)
    for n in args.roi_n:
        rows.append(_run(_roi_case, n, args.rois, args.text_len, args.roi_dim, args.roi_heads, args.roi_chunk))
        print(rows[-1], flush=True)

    print("\n| case | N | dim | chunk | time (s) | peak above baseline (MiB) | baseline RSS (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['case']} | {r['n']} | {r['dim']} | {r['chunk']} | {r['seconds']:.2f} | "
            f"{r['peak_extra_mib']:.0f} | {r['baseline_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
