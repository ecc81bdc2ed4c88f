"""``mmclip-dist synthetic``: writes the dataset the config asks for and prints its summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmclip_dist.cli.main import main


def test_synthetic_command_applies_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vindr"
    code = main(["synthetic", "--out", str(out), "synthetic.num_patients=2", "synthetic.height=128",
                 "synthetic.width=96", "synthetic.normal_fraction=1.0"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"] == 2 and summary["images"] == 8 and summary["normal_breasts"] == 4
    assert summary["root"] == str(out)
    with (out / "breast-level_annotations.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["height"], r["width"]) for r in rows} == {("128", "96")}
    assert len(list((out / "images").glob("*/*.dicom"))) == 8


def test_synthetic_command_rejects_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synthetic", "--out", str(tmp_path), "synthetic.num_patientz=2"]) == 1
    assert "synthetic.num_patientz: unknown key" in capsys.readouterr().err
