"""Structured per-view reports in the style of the MM-CLIP paper's Figure 1, plus an LLM plug-in point.

Public datasets ship no reports, so each view gets a deterministic template report built from its
annotations::

    Projection Position: LCC
    Breast Density: B.
    Radiological Description: A mass (BI-RADS 4) is observed in the outer region at middle depth. ...
    Pathology: malignancy (BI-RADS proxy, not biopsy-proven).

Location comes from where the box lies in the stored (cropped, flipped, resized) image, read with the
standard display convention: on CC the lateral (outer) side is at the top, on MLO the superior side is
at the top; the distance from the chest wall gives posterior / middle / anterior depth, and an anterior
central finding is "retroareolar". The paper rewrites such reports with an LLM; ``ReportRewriter`` is
where that plugs in (``shards.report_rewriter = "package.module:attr"``), off by default. A rewriter must
be deterministic (fixed seed / temperature 0, or a cache) or shards stop being reproducible.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# Noun phrases for the VinDr finding categories (and the CBIS/generic labels mapped onto them).
_PHRASES = {
    "mass": "a mass",
    "suspicious calcification": "suspicious calcifications",
    "calcification": "calcifications",
    "focal asymmetry": "a focal asymmetry",
    "architectural distortion": "an architectural distortion",
    "asymmetry": "an asymmetry",
    "skin thickening": "skin thickening",
    "suspicious lymph node": "a suspicious lymph node",
    "nipple retraction": "nipple retraction",
    "global asymmetry": "a global asymmetry",
    "skin retraction": "skin retraction",
}
_PLURAL = {"suspicious calcifications", "calcifications"}


@dataclass(frozen=True)
class Finding:
    """One annotated finding of a view; ``box`` is in stored-image pixels (None when not localised)."""

    label: str
    box: tuple[float, float, float, float] | None = None
    birads: int | None = None


def _subject(label: str) -> tuple[str, bool]:
    """Capitalised noun phrase of a (possibly comma-joined) label, and whether it takes a plural verb."""
    parts = [p.strip().lower() for p in label.split(",") if p.strip()] or ["finding"]
    phrases = [_PHRASES.get(p, f"a finding ({p})") for p in parts]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " with " + phrases[-1]
    return text[0].upper() + text[1:], phrases[0] in _PLURAL


def describe_location(
    box: tuple[float, float, float, float], content: tuple[float, float, float, float], view: str, chest_wall: str
) -> str:
    """Region of a box: vertical third (outer/inner on CC, upper/lower on MLO) and depth from the chest wall.

    ``content`` (x0, y0, x1, y1) is the part of the stored image holding the breast (padding excluded),
    so depth is measured between the chest wall edge and the breast's far (nipple) edge.
    """
    x0, y0, x1, y1 = content
    width, height = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    cx = ((box[0] + box[2]) / 2.0 - x0) / width
    cy = ((box[1] + box[3]) / 2.0 - y0) / height
    # Fraction of the way from the chest wall to the nipple side: 0 = at the wall, 1 = the far edge.
    depth = cx if chest_wall == "left" else 1.0 - cx
    vertical = cy
    top, bottom = ("outer", "inner") if view == "cc" else ("upper", "lower")
    band = top if vertical < 1 / 3 else bottom if vertical > 2 / 3 else "central"
    if depth > 2 / 3:
        if band == "central":
            return "the retroareolar region, near the nipple"
        return f"the {band} region, anterior, near the nipple"
    where = "posterior, near the chest wall" if depth < 1 / 3 else "at middle depth"
    return f"the {band} region, {where}"


def pathology_line(label_malignant: int, label_source: str) -> str:
    """'malignancy' / 'benign' / 'unknown', saying when the label is only a BI-RADS proxy."""
    word = {1: "malignancy", 0: "benign"}.get(label_malignant, "unknown")
    if label_source == "birads_proxy" and label_malignant in (0, 1):
        return f"Pathology: {word} (BI-RADS proxy, not biopsy-proven)."
    return f"Pathology: {word}."


def view_report(
    *,
    laterality: str,
    view: str,
    density: str | None,
    birads: int | None,
    findings: list[Finding],
    content: tuple[float, float, float, float],
    chest_wall: str,
    label_malignant: int,
    label_source: str,
) -> str:
    """The template report of one view (deterministic: same inputs, same text)."""
    sentences = []
    for finding in findings:
        subject, plural = _subject(finding.label)
        if finding.birads is not None:
            subject += f" (BI-RADS {finding.birads})"
        verb = "are" if plural else "is"
        if finding.box is not None:
            where = describe_location(finding.box, content, view, chest_wall)
            sentences.append(f"{subject} {verb} observed in {where}.")
        else:
            sentences.append(f"{subject} {verb} observed.")
    if not sentences:
        # A malignant breast without region annotations (RSNA) is not "normal": say what we know.
        sentences.append(
            "No region-level annotation is available." if label_malignant == 1 else "No suspicious findings."
        )
    if birads is not None:
        sentences.append(f"Breast assessment: BI-RADS {birads}.")
    return "\n".join(
        [
            f"Projection Position: {laterality}{view.upper()}",
            f"Breast Density: {density}." if density else "Breast Density: not reported.",
            "Radiological Description: " + " ".join(sentences),
            pathology_line(label_malignant, label_source),
        ]
    )


@runtime_checkable
class ReportRewriter(Protocol):
    """Rewrites a template report (e.g. with an LLM, as the paper does with GPT-4).

    ``context`` holds the de-identified facts the template was built from (view, laterality, density,
    BI-RADS, findings with locations, label); it never contains ids or paths. Must be deterministic.
    """

    def rewrite(self, report: str, context: dict[str, Any]) -> str: ...


def load_rewriter(spec: str) -> ReportRewriter | None:
    """``"package.module:attr"`` → rewriter instance; ``attr`` is an instance, or a class / factory called
    without arguments. Empty spec → None (templates are used as they are)."""
    if not spec:
        return None
    if ":" not in spec:
        raise ValueError(f"shards.report_rewriter={spec!r}: expected 'package.module:attr'")
    module_name, attr = spec.split(":", 1)
    obj = getattr(importlib.import_module(module_name), attr)
    # A class also "has" a rewrite attribute, so classes are instantiated before the protocol check.
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, ReportRewriter)):
        obj = obj()
    rewriter = obj
    if not isinstance(rewriter, ReportRewriter):
        raise TypeError(f"shards.report_rewriter={spec!r} has no rewrite(report, context) method")
    return rewriter
