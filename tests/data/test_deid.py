"""De-identification: keyed hashes, salt policy, whitelist, scrubbing, and no PHI anywhere in a build's output."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import tarfile
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
            dataset="vindr",
            input=str(root),
            output=str(out),
            image_size=(96, 64),
            salt="secret-salt-xyz-0001",
            processes=1,
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


# --- free text: known identifiers, the detector, the policy ------------------------------------------


def _known() -> deid.KnownIdentifiers:
    known = deid.KnownIdentifiers()
    known.add_header(
        {
            "PatientName": ["DOE^JANE^M^DR"],
            "PatientID": ["MRN998877"],
            "OtherPatientIDs": ["OPX-4455-66"],
            "PatientBirthDate": ["19610402"],
            "StudyDate": ["20190915"],
            "AccessionNumber": ["E12345678"],
            "InstitutionName": ["St Marys Hospital"],
            "InstitutionAddress": ["12 Main Street^Springfield"],
            "ReferringPhysicianName": ["QUIBBLE^ROSA"],
        }
    )
    known.add_raw_ids(["P-00123", "imgs/p00123_L_CC.dcm"])
    return known


@pytest.mark.parametrize(
    "spelling",
    [
        "Jane Doe", "DOE^JANE", "Doe, Jane", "JANE DOE", "doe jane",
        "1961-04-02", "19610402", "04/02/1961", "4/2/61", "02.04.1961", "2 April 1961", "April 2nd, 1961",
        "Apr 2, 1961", "02-APR-1961", "2nd of April 1961", "Sept. 15, 2019", "15/09/2019",
        "MRN998877", "mrn-998877", "998877", "OPX445566", "E-1234-5678", "e12345678",
        "St Marys  Hospital", "st marys hospital", "12 Main Street", "Springfield",
        "Rosa Quibble", "P-00123", "p00123", "p00123_L_CC",
    ],
)  # fmt: skip
def test_every_spelling_of_the_records_own_identifiers_is_removed(spelling: str) -> None:
    text, removed = _known().remove(f"Seen: {spelling}; a 12 mm mass at 2 o'clock, BI-RADS 4, 3 cm from the nipple.")
    assert removed >= 1
    leftover = [
        w for w in spelling.replace("^", " ").replace(",", " ").split() if len(w) >= 3 and w.lower() in text.lower()
    ]
    assert leftover == [] and spelling.lower() not in text.lower(), text
    assert text.endswith("a 12 mm mass at 2 o'clock, BI-RADS 4, 3 cm from the nipple.")  # report content kept


def test_report_vocabulary_is_not_an_identifier() -> None:
    # Short name parts, prefixes and short ids are not removed (they would eat ordinary words and numbers).
    known = deid.KnownIdentifiers()
    known.add_header({"PatientName": ["LE^AN^^DR"], "PatientID": ["12"], "StudyID": ["1"]})
    text = "An architectural distortion at 12 o'clock; Dr review. BI-RADS 1."
    assert known.remove(text) == (text, 0)


def test_policy_reject_names_types_not_text_and_redact_uses_placeholders() -> None:
    text = "Jane Doe seen 2 April 1961. Call Dr. Kelvorn at (617) 555-0142 or k.vorn@mercy.org. 3 cm mass."
    strict = deid.TextCleaner(_known(), "reject")
    with pytest.raises(deid.PhiFound) as err:
        strict.clean(text, "CC report")
    message = str(err.value)
    assert message.startswith("CC report: 3 PHI span(s) (EMAIL, NAME, PHONE)")
    assert not any(s in message for s in ("Kelvorn", "555", "mercy", "Doe"))
    lenient = deid.TextCleaner(_known(), "redact")
    assert (
        lenient.clean(text, "CC report")
        == "[NAME] [NAME] seen [DATE]. Call Dr. [NAME] at [PHONE] or [EMAIL]. 3 cm mass."
    )
    assert (lenient.identifiers_removed, lenient.phi_redacted) == (3, 1)
    clean = "Breast Density: B.\nRadiological Description: A mass (BI-RADS 4) is observed in the outer region."
    assert strict.clean(clean, "CC report") == clean
    with pytest.raises(ValueError, match="phi_policy='keep'"):
        deid.TextCleaner(_known(), "keep")


def test_burned_in_annotation_is_rejected_unless_allowed(tmp_path: Path) -> None:
    from mmclip_dist.data.build.dicom import decode_dicom

    rows = vindr_rows("s1", lateralities="L") + vindr_rows("s2", lateralities="L")
    root = write_vindr(tmp_path / "in", rows, [no_finding(r) for r in rows], images=False)
    for i, row in enumerate(rows):
        tags = {"BurnedInAnnotation": "YES"} if row["image_id"] == "s1-LMLO" else {"BurnedInAnnotation": "NO"}
        write_image(root / "images" / row["study_id"] / f"{row['image_id']}.dicom", "L", row["view_position"], seed=i,
                    PatientName="BURN^ED", **tags)  # fmt: skip
    assert decode_dicom(root / "images" / "s1" / "s1-LMLO.dicom").burned_in == ("BurnedInAnnotation",)
    assert decode_dicom(root / "images" / "s1" / "s1-LCC.dicom").identifiers["PatientName"] == ["BURN^ED"]

    def build(name: str, **kw: object) -> dict:
        cfg = ShardsConfig(dataset="vindr", input=str(root), output=str(tmp_path / name), image_size=(96, 64),
                           salt="burned-in-salt-0123", processes=1, **kw)  # fmt: skip
        return build_shards(cfg, progress=False).manifest

    strict = build("strict")
    assert strict["samples"] == 1 and strict["rejects"]["by_reason"] == {"burned_in_annotation": 1}
    reject = [json.loads(line) for line in (tmp_path / "strict" / "rejects.jsonl").read_text().splitlines()]
    assert reject[0]["detail"].startswith("MLO: DICOM BurnedInAnnotation = YES")
    assert strict["deid"]["rejected_burned_in"] == 1 and strict["deid"]["allow_burned_in"] is False
    kept = build("kept", allow_burned_in=True)
    assert kept["samples"] == 2 and kept["rejects"]["total"] == 0
    assert kept["deid"]["allow_burned_in"] is True and kept["deid"]["samples_burned_in_kept"] == 1
    assert kept["config"]["allow_burned_in"] is True


# --- acceptance: the planted-PHI corpus through the generic adapter and a PHI-injecting rewriter ------


@pytest.mark.parametrize("policy", ["reject", "redact"])
@pytest.mark.timeout(900)
def test_planted_phi_never_reaches_an_output(policy: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from mmclip_devtools.fixtures.phi_corpus import REWRITER_SPEC, write_phi_dataset
    from mmclip_devtools.fixtures.phi_corpus import leaks as find_leaks
    from mmclip_dist.cli.main import main as cli_main

    data = write_phi_dataset(tmp_path / "in")
    out = tmp_path / "out"
    status = cli_main(
        [
            "shards", "build", f"shards.input={data.csv}", f"shards.output={out}", "shards.dataset=generic",
            "shards.salt=phi-acceptance-salt-0123", "shards.image_size=[64, 48]", "shards.processes=2",
            f"shards.report_rewriter={REWRITER_SPEC}", f"shards.phi_policy={policy}", "shards.max_reject_fraction=1",
        ]
    )  # fmt: skip
    printed = capfd.readouterr()
    assert status == 0, printed.err[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    blobs = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    blobs["<stdout+stderr>"] = (printed.out + printed.err).encode()
    leaked = {name: found for name, blob in blobs.items() if (found := find_leaks(blob, data.sentinels))}
    assert leaked == {}, f"PHI sentinels found in outputs: {leaked}"
    assert len(data.sentinels) > 2000 and data.phi_reports >= 200

    d, reasons = manifest["deid"], manifest["rejects"]["by_reason"]
    phi_breasts, rw = data.phi_reports // 2, data.rewriter_breasts
    print(
        f"\n[phi acceptance, policy={policy}] {data.phi_reports} planted-PHI reports ({phi_breasts} breasts), "
        f"{rw} rewriter breasts, {len(data.clean_breasts)} clean breasts, {len(data.sentinels)} sentinels: "
        f"rejected phi_in_text {d['rejected_phi_in_text']}, samples redacted {d['samples_phi_redacted']}, "
        f"identifiers removed exactly {d['identifiers_removed']}, burned-in rejected {d['rejected_burned_in']}; "
        f"samples {manifest['samples']}; leaks 0"
    )
    assert reasons.get("burned_in_annotation") == data.burned_in_breasts and reasons.get("bad_label") == 1
    if policy == "reject":
        assert d["rejected_phi_in_text"] == phi_breasts + rw and d["samples_phi_redacted"] == 0
        assert manifest["samples"] == len(data.clean_breasts)
    else:
        assert d["rejected_phi_in_text"] == 0 and d["samples_phi_redacted"] == phi_breasts + rw
        assert manifest["samples"] == phi_breasts + rw + len(data.clean_breasts)
    # PHI-free reports pass unchanged (the detector did not fire on them), and exact removal did its part.
    assert d["identifiers_removed"] > 0 if policy == "redact" else True
    reports = set()
    for name, blob in blobs.items():
        if name.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(member).read())
                        reports |= {v["report"] for v in meta["views"].values()}
    for cc, mlo in data.clean_breasts.values():
        assert cc in reports and mlo in reports
