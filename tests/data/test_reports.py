"""Template reports: location words from box geometry, exact report text, pathology wording, rewriter."""

from __future__ import annotations

import sys
import types

import pytest

from mmclip_dist.data.build.reports import (
    Finding,
    ReportRewriter,
    describe_location,
    load_rewriter,
    pathology_line,
    view_report,
)

CONTENT = (0.0, 0.0, 100.0, 300.0)  # breast fills x 0..100, y 0..300


@pytest.mark.parametrize(
    ("box", "view", "wall", "expected"),
    [
        # centre (90, 30): depth 0.9 from a left chest wall, top third → CC "outer", anterior.
        ((85, 20, 95, 40), "cc", "left", "the outer region, anterior, near the nipple"),
        # same box, chest wall on the right: depth 0.1 → posterior.
        ((85, 20, 95, 40), "cc", "right", "the outer region, posterior, near the chest wall"),
        # centre (50, 250): middle depth, bottom third → MLO "lower".
        ((40, 240, 60, 260), "mlo", "left", "the lower region, at middle depth"),
        # centre (80, 150): anterior and vertically central → retroareolar.
        ((70, 140, 90, 160), "mlo", "left", "the retroareolar region, near the nipple"),
        ((70, 140, 90, 160), "cc", "left", "the retroareolar region, near the nipple"),
        # bottom third on CC is the inner (medial) side.
        ((10, 280, 20, 290), "cc", "left", "the inner region, posterior, near the chest wall"),
    ],
)
def test_describe_location(box, view, wall, expected) -> None:
    assert describe_location(box, CONTENT, view, wall) == expected


def test_location_ignores_padding() -> None:
    # Breast occupies x 100..200 of a padded image: centre x=190 is 90% of the way to the nipple edge.
    assert describe_location((185, 20, 195, 40), (100, 0, 200, 300), "cc", "left").endswith("near the nipple")


def test_view_report_exact_text() -> None:
    text = view_report(
        laterality="L",
        view="cc",
        density="B",
        birads=4,
        findings=[Finding("Mass", (85, 20, 95, 40), 4), Finding("Suspicious Calcification", (40, 240, 60, 260), None)],
        content=CONTENT,
        chest_wall="left",
        label_malignant=1,
        label_source="birads_proxy",
    )
    assert text == (
        "Projection Position: LCC\n"
        "Breast Density: B.\n"
        "Radiological Description: A mass (BI-RADS 4) is observed in the outer region, anterior, near the nipple. "
        "Suspicious calcifications are observed in the inner region, at middle depth. Breast assessment: BI-RADS 4.\n"
        "Pathology: malignancy (BI-RADS proxy, not biopsy-proven)."
    )


def test_normal_and_unannotated_cancer() -> None:
    normal = view_report(
        laterality="R",
        view="mlo",
        density=None,
        birads=1,
        findings=[],
        content=CONTENT,
        chest_wall="right",
        label_malignant=0,
        label_source="birads_proxy",
    )
    assert normal.splitlines() == [
        "Projection Position: RMLO",
        "Breast Density: not reported.",
        "Radiological Description: No suspicious findings. Breast assessment: BI-RADS 1.",
        "Pathology: benign (BI-RADS proxy, not biopsy-proven).",
    ]
    cancer = view_report(
        laterality="R",
        view="cc",
        density="C",
        birads=None,
        findings=[],
        content=CONTENT,
        chest_wall="right",
        label_malignant=1,
        label_source="pathology",
    )
    assert "No region-level annotation is available." in cancer
    assert "No suspicious findings" not in cancer
    assert cancer.endswith("Pathology: malignancy.")


def test_multi_category_and_unlocalised_finding() -> None:
    text = view_report(
        laterality="L",
        view="cc",
        density="A",
        birads=None,
        findings=[Finding("Mass, Suspicious Calcification", None, 5)],
        content=CONTENT,
        chest_wall="left",
        label_malignant=1,
        label_source="pathology",
    )
    assert "A mass with suspicious calcifications (BI-RADS 5) is observed." in text


def test_pathology_line() -> None:
    assert pathology_line(1, "pathology") == "Pathology: malignancy."
    assert pathology_line(0, "pathology") == "Pathology: benign."
    assert pathology_line(0, "birads_proxy") == "Pathology: benign (BI-RADS proxy, not biopsy-proven)."
    assert pathology_line(-1, "birads_proxy") == "Pathology: unknown."


class _Upper:
    def rewrite(self, report: str, context: dict) -> str:
        return report.upper() + f" [{context['view']}]"


def test_load_rewriter() -> None:
    module = types.ModuleType("_mmclip_test_rewriters")
    module.Upper = _Upper
    module.instance = _Upper()
    module.not_a_rewriter = object()
    sys.modules[module.__name__] = module
    try:
        assert load_rewriter("") is None
        rewriter = load_rewriter("_mmclip_test_rewriters:Upper")
        assert isinstance(rewriter, ReportRewriter)
        assert rewriter.rewrite("a", {"view": "cc"}) == "A [cc]"
        assert isinstance(load_rewriter("_mmclip_test_rewriters:instance"), _Upper)
        with pytest.raises(TypeError, match="rewrite"):
            load_rewriter("_mmclip_test_rewriters:not_a_rewriter")
        with pytest.raises(ValueError, match="module:attr"):
            load_rewriter("_mmclip_test_rewriters.Upper")
    finally:
        del sys.modules[module.__name__]
