"""VinDr-Mammo: ``breast-level_annotations.csv`` + ``finding_annotations.csv`` → one record per breast.

A breast is ``study_id`` + ``laterality`` with one CC and one MLO image at
``images/<study_id>/<image_id>.dicom``. Boxes come from the finding rows of each image (DICOM pixel
grid); "No Finding" rows carry none. VinDr has no pathology, so the label is a BI-RADS proxy of the
breast-level assessment: >= ``shards.birads_malignant_min`` malignant, <= ``shards.birads_benign_max``
benign, anything between unknown (-1). ``label_source`` says "birads_proxy" in every sample.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mmclip_dist.data.build.adapters import (
    MISSING_VALUES,
    BadValue,
    BreastAssembler,
    check_files,
    count_inputs,
    parse_box,
    parse_laterality_view,
    parse_number,
    read_csv,
)
from mmclip_dist.data.build.records import AdapterResult, BreastRecord, Reject, ViewRecord

if TYPE_CHECKING:
    from mmclip_dist.config import ShardsConfig

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
IMAGE_COLUMNS = (
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
)
FINDING_COLUMNS = IMAGE_COLUMNS + ("finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax")
SPLITS = {"training": "train", "test": "test"}
NO_FINDING = "No Finding"
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


def parse_birads(value: str, column: str = "BI-RADS") -> int:
    """'BI-RADS 4' → 4 (also '4', '4.0', '4A'); raises :class:`BadValue` for anything else."""
    text = re.sub(r"^BI-?RADS\s*", "", value.strip(), flags=re.IGNORECASE)
    match = re.fullmatch(r"([0-6])[ABC]", text, flags=re.IGNORECASE)
    if match:
        return int(match.group(1))
    try:
        number = parse_number({column: text}, column, low=0, high=6, required=True)
    except BadValue:
        raise BadValue(column, value, "a BI-RADS value 0-6") from None
    return int(number)  # type: ignore[arg-type]


def parse_density(value: str, column: str = "density") -> str | None:
    """'DENSITY B' → 'B'; empty / nan → None; raises :class:`BadValue` for anything else."""
    if value.strip().lower() in MISSING_VALUES:
        return None
    match = re.fullmatch(r"(?:DENSITY\s*)?([ABCD])", value.strip(), flags=re.IGNORECASE)
    if not match:
        raise BadValue(column, value, "a density A-D")
    return match.group(1).upper()


def parse_categories(value: str) -> list[str]:
    """ "['Mass', 'Suspicious Calcification']" → list; a bare category string is accepted too."""
    text = value.strip()
    if text.startswith("["):
        parsed = ast.literal_eval(text)  # ValueError/SyntaxError propagate to a bad_label reject
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError(f"finding_categories {value!r} is not a list of strings")
        return [p.strip() for p in parsed]
    return [text] if text else []


def birads_proxy(birads: int, malignant_min: int, benign_max: int) -> int:
    """1 / 0 / -1 (unknown) from a breast BI-RADS and the configured thresholds."""
    if birads >= malignant_min:
        return 1
    if birads <= benign_max:
        return 0
    return -1


def read(cfg: ShardsConfig) -> AdapterResult:
    """Read a VinDr-Mammo root folder (``cfg.input``)."""
    root = Path(cfg.input)
    rejects: list[Reject] = []
    assembler = BreastAssembler(cfg.missing_view)
    images: dict[str, tuple[str, ViewRecord]] = {}  # image_id -> (breast raw id, view record)
    breast_labels: dict[str, tuple[int, str | None, str]] = {}  # breast -> (birads, density, split)
    rejected_images: set[str] = set()  # their finding rows are part of the rejected input, not orphans

    for source, row in read_csv(root / BREAST_CSV, IMAGE_COLUMNS):
        if not row["study_id"] or not row["image_id"]:
            rejects.append(Reject(source, "bad_id", "empty study_id or image_id"))
            continue
        if row["image_id"] not in images:
            rejected_images.add(row["image_id"])  # until the row is accepted below
        if row["image_id"] in images:
            rejects.append(
                Reject(source, "duplicate_id", f"image_id already listed at {images[row['image_id']][1].source}")
            )
            continue
        side = parse_laterality_view(row, source, "laterality", "view_position", rejects)
        if side is None:
            continue
        laterality, view = side
        breast_id = f"{row['study_id']}_{laterality}"
        split = SPLITS.get(row["split"])
        if split is None:
            assembler.reject_breast(
                breast_id, Reject(source, "bad_split", f"split {row['split']!r} is not training/test")
            )
            continue
        try:
            birads = parse_birads(row["breast_birads"], "breast_birads")
            density = parse_density(row["breast_density"], "breast_density")
            # Not used downstream (the DICOM states its size), but a garbled size means a garbled row.
            for column in ("height", "width"):
                parse_number(row, column, low=1, high=1e6)
        except BadValue as err:
            assembler.reject_breast(breast_id, Reject(source, "bad_label", str(err)))
            continue
        if breast_id in breast_labels and breast_labels[breast_id] != (birads, density, split):
            assembler.reject_breast(
                breast_id,
                Reject(
                    source,
                    "inconsistent_breast_labels",
                    f"BI-RADS/density/split {(birads, density, split)} differ from the breast's other image "
                    f"{breast_labels[breast_id]}",
                ),
            )
            continue
        breast_labels[breast_id] = (birads, density, split)
        view_record = ViewRecord(
            path=str(root / "images" / row["study_id"] / f"{row['image_id']}.dicom"), source=source
        )
        images[row["image_id"]] = (breast_id, view_record)
        rejected_images.discard(row["image_id"])
        record = BreastRecord(
            dataset="vindr",
            breast_id=breast_id,
            patient_id=row["study_id"],
            laterality=laterality,
            split=split,
            label_malignant=birads_proxy(birads, cfg.birads_malignant_min, cfg.birads_benign_max),
            label_source="birads_proxy",
            density=density,
            birads=birads,
            views={},
            source=source,
            extra={"raw_ids": [row["study_id"], row["series_id"], row["image_id"]]},
        )
        assembler.add_view(record, view, view_record)
        kept = assembler.breasts.get(breast_id)
        if kept is not None and kept is not record:  # second image of a known breast: keep its ids too
            kept.extra["raw_ids"].extend([row["series_id"], row["image_id"]])

    for source, row in read_csv(root / FINDING_CSV, FINDING_COLUMNS):
        entry = images.get(row["image_id"])
        if entry is None and row["image_id"] in rejected_images:
            continue
        if entry is None:
            rejects.append(Reject(source, "orphan_finding", "image_id is not in " + BREAST_CSV))
            continue
        breast_id, view_record = entry
        try:
            categories = parse_categories(row["finding_categories"])
            finding_birads = (
                None
                if row["finding_birads"].lower() in MISSING_VALUES
                else parse_birads(row["finding_birads"], "finding_birads")
            )
        except BadValue as err:
            assembler.reject_breast(breast_id, Reject(source, "bad_label", str(err)))
            continue
        except (ValueError, SyntaxError):
            bad_value = BadValue("finding_categories", row["finding_categories"], "a list of category names")
            assembler.reject_breast(breast_id, Reject(source, "bad_label", str(bad_value)))
            continue
        categories = [c for c in categories if c != NO_FINDING]
        box, bad = parse_box([row[c] for c in BOX_COLUMNS], source, list(BOX_COLUMNS))
        if bad is not None:
            assembler.reject_breast(breast_id, bad)
            continue
        if not categories:
            continue  # "No Finding" row (a box on it would be meaningless, and VinDr has none)
        if box is None:
            continue  # a finding without a box (rare): the breast-level label still covers it
        view_record.boxes.append(box)
        view_record.box_labels.append(", ".join(categories))
        view_record.finding_birads.append(finding_birads)

    records = assembler.finish()
    rejects = rejects + assembler.rejects
    records = check_files(records, rejects)
    return AdapterResult(
        records=records, rejects=rejects, label_source="birads_proxy", inputs=count_inputs(assembler, rejects)
    )
