"""The PHI detector: recall on the planted corpus, report vocabulary left alone, typed placeholders, offline."""

from __future__ import annotations

import socket

import pytest

from mmclip_devtools.fixtures.phi_corpus import measure_recall
from mmclip_dist.data.build import phi_detector
from mmclip_dist.data.build.phi_detector import find_phi, redact

CLEAN = [
    "BI-RADS 4: Suspicious.", "Breast Density: C.", "A 2 cm mass at 12 o'clock, 4 cm FN.",
    "Upper outer quadrant of the left breast.", "Hologic Selenia Dimensions, kVp 29, 120 mAs.",
    "ACR BI-RADS Atlas 5th Edition, category 4B.", "Tyrer-Cuzick lifetime risk 22%.",
    "ER/PR positive, HER2 negative, Ki-67 20%, T1c N0 M0.", "1.2 x 0.8 x 0.5 cm at 3:00, 2/3 of the breast.",
    "Follow-up in 6 months. Patient ID: see header.", "IMPRESSION: BI-RADS 0: Incomplete.",
    "Comparison: prior exams from 2 and 3 years ago.", "MLO and CC views with CAD, 3D tomosynthesis.",
    "Projection Position: LCC\nBreast Density: B.\nRadiological Description: A mass (BI-RADS 4) is observed in the "
    "outer region, posterior, near the chest wall. Suspicious calcifications are observed in the retroareolar "
    "region, near the nipple. Breast assessment: BI-RADS 4.\nPathology: malignancy (BI-RADS proxy, not biopsy-proven).",
]  # fmt: skip


def test_report_vocabulary_is_left_alone() -> None:
    for text in CLEAN:
        assert find_phi(text) == [], (text, find_phi(text))


def test_typed_placeholders() -> None:
    text = "Name: QXVORAK^JANE, MRN: A1234567, DOB 2 April 1961, call (617) 555-0142, Dr. Kelvorn. j.q@mercy.org"
    assert redact(text) == "Name: [NAME], MRN: [MRN], DOB [DATE], call [PHONE], Dr. [NAME]. [EMAIL]"
    assert find_phi(redact(text)) == []  # placeholders do not trip it again


def test_recall_on_the_planted_corpus() -> None:
    recall = measure_recall(find_phi)
    print(f"\nPHI detector recall on the planted corpus (PHI-free reports changed: {recall.clean_changed:.1%}):")
    print(recall.table())
    assert {t for t in recall.by_type if ":" not in t} == {
        "NAME",
        "MRN",
        "ACCESSION",
        "DATE",
        "PHONE",
        "EMAIL",
        "ADDRESS",
    }
    assert len([t for t in recall.by_type if t.startswith("DATE:")]) >= 5
    assert recall.by_type == {t: 1.0 for t in recall.by_type}
    assert recall.clean_changed < 0.01


def test_detector_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PHI detector tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(phi_detector, "_ENGINE", None)  # build it again, under the block
    assert (
        redact("Results sent to jane.doe@mercyhealth.org, Tel 617-555-0142.") == "Results sent to [EMAIL], Tel [PHONE]."
    )
