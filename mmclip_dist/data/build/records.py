"""Dataset-independent records that every adapter produces and the shard writer consumes.

An adapter turns a dataset's CSVs into ``BreastRecord``s (one per breast = one future sample) and
``Reject``s (inputs it could not use, with the reason). Records still carry raw ids and paths; only
``mmclip_dist.data.build.deid`` decides what of them may leave the builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

LabelSource = Literal["pathology", "birads_proxy"]
Laterality = Literal["L", "R"]


@dataclass
class ViewRecord:
    """One image of a breast, with annotations in the pixel grid of the original DICOM."""

    path: str
    boxes: list[list[float]] = field(default_factory=list)  # [x1, y1, x2, y2], DICOM pixel grid
    box_labels: list[str] = field(default_factory=list)
    finding_birads: list[int | None] = field(default_factory=list)  # per box; None when not given
    mask_path: str | None = None  # a lesion mask file known to belong to this image (generic CSV)
    # CBIS-DDSM: one group per abnormality, holding the files that may be its ROI mask (the mask and the
    # lesion crop share folders whose file order is unreliable); the worker picks by size and takes the
    # abnormality's box from the mask, so box_labels / finding_birads then have one entry per group.
    mask_candidates: list[list[str]] = field(default_factory=list)
    source: str = ""  # "file.csv:row" of the row this view came from, for error messages
    report: str | None = None  # report text shipped with this image (generic CSV); else generated


@dataclass
class BreastRecord:
    """One breast of one study: the unit of a shard sample (CC + MLO)."""

    dataset: str
    breast_id: str  # raw, dataset-specific id (hashed before it is written anywhere)
    patient_id: str  # raw
    laterality: Laterality
    split: str
    label_malignant: int  # 1 malignant, 0 benign/normal, -1 unknown
    label_source: LabelSource
    density: str | None  # "A".."D"
    birads: int | None  # breast-level BI-RADS
    views: dict[str, ViewRecord]
    source: str  # "file.csv:rows" for error messages
    extra: dict[str, Any] = field(default_factory=dict)
    report: str | None = None  # report text shipped with the dataset (generic CSV); else generated

    def raw_identifiers(self) -> list[str]:
        """Every raw string of this record that must never reach the output (ids, paths)."""
        values = [self.breast_id, self.patient_id]
        for view in self.views.values():
            values.append(view.path)
            if view.mask_path:
                values.append(view.mask_path)
            for group in view.mask_candidates:
                values.extend(group)
        values.extend(str(v) for v in self.extra.get("raw_ids", []))
        return [v for v in values if v]


# Reasons for images left out by design while their breast still becomes a sample (a third CC, an AT
# view): they are listed in rejects.jsonl but do not count against shards.max_reject_fraction.
UNUSED_IMAGE_REASONS = frozenset({"duplicate_view", "other_view"})


@dataclass(frozen=True)
class Reject:
    """An input that did not become a sample: where it came from, a short reason code, details."""

    source: str
    reason: str
    detail: str = ""

    @property
    def counts(self) -> bool:
        """Whether this reject lost data (counts against the reject fraction)."""
        return self.reason not in UNUSED_IMAGE_REASONS

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason, "detail": self.detail}


@dataclass
class AdapterResult:
    """What an adapter read: the usable breasts and the inputs it rejected while parsing."""

    records: list[BreastRecord]
    rejects: list[Reject]
    label_source: LabelSource
    inputs: int = 0  # breasts seen in the CSVs, including rejected ones
