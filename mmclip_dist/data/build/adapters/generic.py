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

from mmclip_dist.data.build.adapters import BreastAssembler, check_files, parse_laterality_view, read_csv
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
        records=records, rejects=rejects, label_source=label_source, inputs=len(records) + len(rejects)
    )


def _record(row: dict[str, str], source: str, breast_id: str, laterality: Laterality) -> BreastRecord:
    label = LABELS.get(row["label"].strip().lower())
    if label is None:
        raise ValueError(f"bad_label: label {row['label']!r} is not 1/0/-1 or malignant/benign/unknown")
    label_source = _LABEL_SOURCES.get(row.get("label_source") or "pathology")
    if label_source is None:
        raise ValueError(f"bad_label: label_source {row['label_source']!r} is not pathology or birads_proxy")
    split = SPLITS.get(row.get("split", "").lower())
    if split is None:
        raise ValueError(f"bad_split: split {row['split']!r} is not train or test")
    density = (row.get("density") or "").upper() or None
    if density is not None and density not in ("A", "B", "C", "D"):
        raise ValueError(f"bad_label: density {row['density']!r} is not A-D")
    try:
        birads = int(row["birads"]) if row.get("birads") else None
    except ValueError:
        raise ValueError(f"bad_label: birads {row['birads']!r} is not a number") from None
    return BreastRecord(
        dataset="generic",
        breast_id=breast_id,
        patient_id=row["patient_id"],
        laterality=laterality,
        split=split,
        label_malignant=label,
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
        boxes = [[float(v) for v in b] for b in boxes]
    except (TypeError, ValueError):
        raise ValueError("bad_box: box coordinates are not numbers") from None
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
