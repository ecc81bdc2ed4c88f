"""De-identification: keyed hashes, salt policy, whitelist, scrubbing, and no PHI anywhere in a build's output."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from mmclip_devtools.fixtures.datasets import finding, no_finding, vindr_rows, write_image, write_vindr
from mmclip_dist.config import ShardsConfig
from mmclip_dist.data.build import deid
from mmclip_dist.data.build.builder import build_shards


def test_hash_id_is_keyed_hmac() -> None:
    expected = hmac.new(b"salt", b"vindr/breast\x00s1_L", hashlib.sha256).hexdigest()[:32]
    assert deid.hash_id("s1_L", "salt", "vindr/breast") == expected
    assert deid.hash_id("s1_L", "other", "vindr/breast") != expected
    assert deid.hash_id("s1_L", "salt", "vindr/patient") != expected


def test_resolve_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(deid.SALT_ENV, raising=False)
    cfg_salt, env_salt = "cfg-salt-0123456789", "env-salt-0123456789"
    assert deid.resolve_salt(cfg_salt, synthetic=False) == cfg_salt
    assert deid.resolve_salt("", synthetic=True) == deid.SYNTHETIC_SALT
    with pytest.raises(deid.SaltError):
        deid.resolve_salt("", synthetic=False)
    monkeypatch.setenv(deid.SALT_ENV, env_salt)
    assert deid.resolve_salt("", synthetic=False) == env_salt
    assert deid.resolve_salt(cfg_salt, synthetic=False) == cfg_salt
    monkeypatch.setenv(deid.SALT_ENV, "short")
    with pytest.raises(deid.SaltError, match="MMCLIP_ID_SALT is 5 characters"):
        deid.resolve_salt("", synthetic=False)


def test_whitelist_drops_unknown_keys_and_text_in_transform() -> None:
    sample = {
        "schema": 1,
        "breast_id": "h",
        "PatientName": "X",
        "label": {"malignant": 1, "source": "pathology", "raw": "X"},
        "views": {
            "cc": {
                "boxes": [],
                "report": "r",
                "path": "/data/X.dcm",
                "transform": {"flipped": True, "crop": [0, 1, 2, 3], "note": "X", "side": "left"},
            }
        },
    }
    assert deid.whitelist(sample) == {
        "schema": 1,
        "breast_id": "h",
        "label": {"malignant": 1, "source": "pathology"},
        "views": {
            "cc": {"boxes": [], "report": "r", "transform": {"flipped": True, "crop": [0, 1, 2, 3], "side": "left"}}
        },
    }


def test_scrub_removes_paths_names_and_stems() -> None:
    text = "/data/images/STUDY123/IMG456.dicom: truncated; see IMG456 and STUDY123"
    out = deid.scrub(text, ["/data/images/STUDY123/IMG456.dicom", "STUDY123"])
    assert "STUDY123" not in out and "IMG456" not in out
    assert out.endswith("truncated; see <redacted> and <redacted>")


PHI = {
    "PatientName": "Nguyen^Thi^PHI-NAME-7731",
    "PatientID": "PHI-PID-99281",
    "PatientBirthDate": "19580417",
    "AccessionNumber": "PHI-ACC-55120",
    "InstitutionName": "PHI Hospital of Hanoi 8812",
    "StudyDate": "20190923",
    "StudyInstanceUID": "1.2.826.0.1.3680043.77.4711.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.77.4711.2",
    "SOPInstanceUID": "1.2.826.0.1.3680043.77.4711.3",
}


def test_no_phi_in_any_output_byte(tmp_path: Path) -> None:
    studies = {name: vindr_rows(name, lateralities="LR") for name in ("PHI-STUDY-31337a", "PHI-STUDY-31337b")}
    for rows in studies.values():
        for row in rows:
            row["series_id"] = f"PHI-SERIES-{row['image_id']}"
            row["image_id"] = f"PHI-IMAGE-{row['image_id']}"
    rows = [r for rs in studies.values() for r in rs]
    findings = [finding(rows[0], (5, 10, 20, 30))] + [no_finding(r) for r in rows[1:]]
    root = write_vindr(tmp_path / "in", rows, findings, images=False)
    raw_ids = set()
    for i, row in enumerate(rows):
        path = root / "images" / row["study_id"] / f"{row['image_id']}.dicom"
        tags = {k: (f"{v}.{i}" if k == "SOPInstanceUID" else v) for k, v in PHI.items()}
        write_image(path, row["laterality"], row["view_position"], seed=i, **tags)
        raw_ids |= {row["study_id"], row["series_id"], row["image_id"]}
    # Bad inputs whose error messages would quote paths: a truncated file and a non-DICOM file.
    bad = root / "images" / rows[4]["study_id"] / f"{rows[4]['image_id']}.dicom"
    bad.write_bytes(bad.read_bytes()[:-2000])
    (root / "images" / rows[6]["study_id"] / f"{rows[6]['image_id']}.dicom").write_bytes(b"garbage " * 40)

    out = tmp_path / "out"
    result = build_shards(
        ShardsConfig(
            dataset="vindr", input=str(root), output=str(out), image_size=(96, 64), salt="secret-salt-xyz-0001", processes=1
        ),
        progress=False,
    )
    assert result.samples == 2 and {r["reason"] for r in result.rejects} == {"truncated", "not_dicom"}
    files = sorted(out.iterdir())
    assert {p.suffix for p in files} == {".tar", ".json", ".jsonl"}
    blob = b"".join(p.read_bytes() for p in files)
    secrets = (
        set(PHI.values())
        | raw_ids
        | {
            "secret-salt-xyz-0001",
            "PHI-NAME",
            "PHI-PID",
            "PHI-ACC",
            "PHI Hospital",
            "3680043.77",
            "PHI-STUDY",
            "PHI-SERIES",
            "PHI-IMAGE",
        }
    )
    leaked = sorted(s for s in secrets if s.encode() in blob)
    assert leaked == []
    # The rejects still say where the problem is: CSV file and line.
    assert all(r["source"].startswith("breast-level_annotations.csv:") for r in result.rejects)
