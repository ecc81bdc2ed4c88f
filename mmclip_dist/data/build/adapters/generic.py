"""Generic CSV for private datasets: one row per image (format documented in docs/shards.md).

Required columns: ``patient_id, image_path, laterality, view, label``. Optional: ``breast_id``
(default ``<patient_id>_<laterality>``), ``split`` (train/test; empty → ``shards.test_fraction``),
``label_source`` (pathology | birads_proxy; default pathology), ``density`` (A-D), ``birads`` (0-6),
``boxes`` (JSON list of ``[x1, y1, x2, y2]`` in the image's pixel grid), ``box_labels`` (JSON list of
strings, one per box), ``mask_path`` (a PNG or DICOM lesion mask, nonzero = lesion), ``report`` (report
text of this image; when given it is used as is instead of the template). Paths are relative to the
CSV's folder unless absolute. ``label``: 1/0/-1 or malignant/benign/unknown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mmclip_dist.data.build.adapters import (
    MISSING_VALUES,
    BadValue,
    BreastAssembler,
    check_files,
    count_inputs,
    parse_laterality_view,
    parse_number,
    read_csv,
)
from mmclip_dist.data.build.records import AdapterResult, BreastRecord, LabelSource, Laterality, Reject, ViewRecord

if TYPE_CHECKING:
    from mmclip_dist.config import ShardsConfig

REQUIRED = ("patient_id", "image_path", "laterality", "view", "label")
LABELS = {"1": 1, "0": 0, "-1": -1, "malignant": 1, "benign": 0, "unknown": -1}
SPLITS = {"train": "train", "training": "train", "test": "test", "": ""}
_LABEL_SOURCES: dict[str, LabelSource] = {"pathology": "pathology", "birads_proxy": "birads_proxy"}


def read(cfg: ShardsConfig) -> AdapterResult:
    """Read the CSV file ``cfg.input``."""
    csv_path = Path(cfg.input)
    base = csv_path.parent
    rejects: list[Reject] = []
    assembler = BreastAssembler(cfg.missing_view)
    seen_paths: dict[str, str] = {}
    for source, row in read_csv(csv_path, REQUIRED):
        side = parse_laterality_view(row, source, "laterality", "view", rejects)
        if side is None:
            continue
        laterality, view = side
        if not row["patient_id"] or not row["image_path"]:
            rejects.append(Reject(source, "bad_id", "empty patient_id or image_path"))
            continue
        breast_id = row.get("breast_id") or f"{row['patient_id']}_{laterality}"
        if row["image_path"] in seen_paths:
            rejects.append(
                Reject(source, "duplicate_id", f"image_path already listed at {seen_paths[row['image_path']]}")
            )
            continue
        seen_paths[row["image_path"]] = source
        try:
            record = _record(row, source, breast_id, laterality)
            vrec = _view(row, source, base)
        except ValueError as err:
            reason, _, detail = str(err).partition(": ")
            assembler.reject_breast(breast_id, Reject(source, reason, detail))
            continue
        existing = assembler.breasts.get(breast_id)
        if existing is not None and (existing.label_malignant, existing.split) != (
            record.label_malignant,
            record.split,
        ):
            assembler.reject_breast(
                breast_id,
                Reject(source, "inconsistent_breast_labels", "label or split differs between images of the breast"),
            )
            continue
        assembler.add_view(record, view, vrec)
        kept = assembler.breasts.get(breast_id)
        if kept is not None and kept is not record:
            kept.extra["raw_ids"].append(row["image_path"])
    records = assembler.finish()
    rejects += assembler.rejects
    records = check_files(records, rejects)
    sources = {r.label_source for r in records}
    label_source: LabelSource = "birads_proxy" if sources == {"birads_proxy"} else "pathology"
    return AdapterResult(
        records=records, rejects=rejects, label_source=label_source, inputs=count_inputs(assembler, rejects)
    )


def _record(row: dict[str, str], source: str, breast_id: str, laterality: Laterality) -> BreastRecord:
    label: int | None = LABELS.get(row["label"].strip().lower())
    if label is None:
        try:
            label = parse_number(row, "label", low=-1, high=1, required=True)
        except BadValue:
            raise ValueError(
                f"bad_label: {BadValue('label', row['label'], '1/0/-1 or malignant/benign/unknown')}"
            ) from None
    label_source = _LABEL_SOURCES.get(row.get("label_source") or "pathology")
    if label_source is None:
        raise ValueError(f"bad_label: label_source {row['label_source']!r} is not pathology or birads_proxy")
    split = SPLITS.get(row.get("split", "").lower())
    if split is None:
        raise ValueError(f"bad_split: split {row['split']!r} is not train or test")
    density_text = (row.get("density") or "").upper()
    density = None if density_text.lower() in MISSING_VALUES else density_text
    if density is not None and density not in ("A", "B", "C", "D"):
        raise ValueError(f"bad_label: {BadValue('density', row['density'], 'A-D')}")
    try:
        birads = parse_number(row, "birads", low=0, high=6)
    except BadValue as err:
        raise ValueError(f"bad_label: {err}") from None
    return BreastRecord(
        dataset="generic",
        breast_id=breast_id,
        patient_id=row["patient_id"],
        laterality=laterality,
        split=split,
        label_malignant=label,  # type: ignore[arg-type]  # required=True above: never None here
        label_source=label_source,
        density=density,
        birads=birads,
        views={},
        source=source,
        extra={"raw_ids": [row["patient_id"], breast_id, row["image_path"]]},
    )


def _view(row: dict[str, str], source: str, base: Path) -> ViewRecord:
    try:
        boxes = json.loads(row["boxes"]) if row.get("boxes") else []
        labels = json.loads(row["box_labels"]) if row.get("box_labels") else ["Finding"] * len(boxes)
    except json.JSONDecodeError as err:
        raise ValueError(f"bad_box: boxes / box_labels are not JSON ({err.msg})") from None
    if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
        raise ValueError("bad_box: boxes must be a JSON list of [x1, y1, x2, y2]")
    try:
        boxes = [
            [
                float(parse_number({"boxes": _json_text(v)}, "boxes", integer=False, required=True))  # type: ignore[arg-type]
                for v in b
            ]
            for b in boxes
        ]
    except BadValue as err:
        raise ValueError(f"bad_box: {err}") from None
    if any(b[2] <= b[0] or b[3] <= b[1] for b in boxes):
        raise ValueError("inverted_box: a box has x2 <= x1 or y2 <= y1")
    if not isinstance(labels, list) or len(labels) != len(boxes):
        raise ValueError(
            f"bad_box: {len(boxes)} boxes but box_labels has {len(labels) if isinstance(labels, list) else '?'} entries"
        )
    mask = row.get("mask_path") or None
    return ViewRecord(
        path=str(base / row["image_path"]),
        boxes=boxes,
        box_labels=[str(x) for x in labels],
        finding_birads=[None] * len(boxes),
        mask_path=str(base / mask) if mask else None,
        source=source,
        report=row.get("report") or None,
    )


def _json_text(value: object) -> str:
    """A JSON value as the text it was written as (``null`` stays ``null``; a string stays itself)."""
    return value if isinstance(value, str) else json.dumps(value)
