"""Gather-with-grad exactness: 2 gloo ranks (real processes) == 1 process on the concatenated batch.

For each loss term separately, and for the micro-batch feature cache, the rank-averaged gradient of
every parameter (what DeepSpeed/DDP apply) must equal the single-process gradient, with the two ranks
holding different numbers of views with RoIs.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmclip_dist.loopback import free_port

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]
TERMS = ("loss_global", "loss_roi", "loss_cross_view", "loss", "cache")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, text_folder: Path) -> dict:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    port = free_port()
    jobs = {
        "single": [sys.executable, str(WORKER), "0", "1", "0", str(text_folder), str(out / "single.pt")],
        **{
            f"rank{r}": [
                sys.executable,
                str(WORKER),
                str(r),
                "2",
                str(port),
                str(text_folder),
                str(out / f"rank{r}.pt"),
            ]
            for r in (0, 1)
        },
    }
    procs = {
        name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for name, cmd in jobs.items()
    }
    try:
        logs = {name: p.communicate(timeout=150)[0].decode(errors="replace") for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} failed:\n{logs[name][-3000:]}"
    return {name: torch.load(out / f"{name}.pt") for name in jobs}


# (dtype, per-parameter relative tolerance, floor as a fraction of the whole gradient's norm). The
# floor is for gradients that are 0 in exact arithmetic (attention key biases, the RoI score's last
# bias: softmax is shift invariant), which hold only rounding noise. fp64 shows the formulation is
# exact; fp32 is what training runs.
TOLERANCES = [("torch.float32", 1e-5, 1e-6), ("torch.float64", 1e-10, 1e-14)]


@pytest.mark.parametrize("dtype,rel,floor", TOLERANCES)
@pytest.mark.parametrize("term", TERMS)
def test_two_ranks_equal_one_process(runs: dict, term: str, dtype: str, rel: float, floor: float) -> None:
    single, ranks = runs["single"][dtype], [runs["rank0"][dtype], runs["rank1"][dtype]]
    mean_value = sum(r["values"][term] for r in ranks) / 2
    assert mean_value == pytest.approx(single["values"][term], rel=rel)
    ref = single["grads"][term]
    avg = {n: (ranks[0]["grads"][term][n] + ranks[1]["grads"][term][n]) / 2 for n in ref}
    total = torch.sqrt(sum(g.pow(2).sum() for g in ref.values()))
    assert total > 0
    diff = torch.sqrt(sum((avg[n] - g).pow(2).sum() for n, g in ref.items()))
    assert diff <= rel * total, f"{term}: whole-gradient relative error {float(diff / total):.2e}"
    for name, g in ref.items():
        err = (avg[name] - g).norm()
        assert err <= rel * g.norm() + floor * total, f"{term}: {name} relative error {float(err / g.norm()):.2e}"


def test_ranks_hold_different_valid_roi_counts(runs: dict) -> None:
    # Guard on the setup itself: the RoI normalisation is only tested if the ranks' counts differ.
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("dist_worker", WORKER)
    worker = module_from_spec(spec)
    spec.loader.exec_module(worker)
    per_rank = [sum(1 for b in worker.VALID_ROIS[r * 4 : r * 4 + 4] if b[0] > 0) for r in (0, 1)]
    assert per_rank[0] != per_rank[1]


def test_logged_values_are_the_single_process_loss(runs: dict) -> None:
    single = runs["single"]["torch.float64"]
    for rank in ("rank0", "rank1"):
        logged = runs[rank]["torch.float64"]["logged"]
        for term in ("loss_global", "loss_roi", "loss_cross_view", "loss"):
            assert logged[term] == pytest.approx(single["values"][term], rel=1e-12)
