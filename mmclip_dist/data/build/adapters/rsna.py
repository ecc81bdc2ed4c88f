"""RSNA Screening Mammography: ``train.csv`` → one record per breast (``<patient_id>_<L|R>``).

Images are ``train_images/<patient_id>/<image_id>.dcm``. ``cancer`` (0/1, biopsy-confirmed within the
screening episode) is used as the pathology label. Only CC and MLO are used: other projections (AT, LM,
ML, LMO) and further CC/MLO images of the same breast are listed as unused images (``other_view`` /
``duplicate_view``, not counted as lost data); the first CC and MLO in ``image_id`` order are kept.
``train.csv`` has no split: ``shards.test_fraction`` of patients (by salted hash) go to "test".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmclip_dist.data.build.adapters import (
    MISSING_VALUES,
    BadValue,
    BreastAssembler,
    check_files,
    count_inputs,
    parse_id,
    parse_laterality_view,
    parse_number,
    read_csv,
)
from mmclip_dist.data.build.records import AdapterResult, BreastRecord, Reject, ViewRecord

if TYPE_CHECKING:
    from mmclip_dist.config import ShardsConfig

CSV = "train.csv"
COLUMNS = (
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
)
DENSITIES = {"A", "B", "C", "D"}


def read(cfg: ShardsConfig) -> AdapterResult:
    """Read an RSNA root folder (``cfg.input``) holding ``train.csv`` and ``train_images/``."""
    root = Path(cfg.input)
    rejects: list[Reject] = []
    rows = list(read_csv(root / CSV, COLUMNS))
    for _, row in rows:  # ids exported as floats (``10006.0``) name the same patient / image file
        row["patient_id"], row["image_id"] = parse_id(row["patient_id"]), parse_id(row["image_id"])
    # Keep the first CC/MLO by image_id so "which duplicate wins" does not depend on CSV row order.
    rows.sort(key=lambda item: (item[1]["patient_id"], item[1]["laterality"], _int_or_text(item[1]["image_id"])))
    assembler = BreastAssembler(cfg.missing_view)
    labels: dict[str, tuple[int, int | None, str | None]] = {}
    seen_images: dict[tuple[str, str], str] = {}
    for source, row in rows:
        if not row["patient_id"] or not row["image_id"]:
            rejects.append(Reject(source, "bad_id", "empty patient_id or image_id"))
            continue
        image_key = (row["patient_id"], row["image_id"])
        if image_key in seen_images:
            rejects.append(Reject(source, "duplicate_id", f"image_id already listed at {seen_images[image_key]}"))
            continue
        seen_images[image_key] = source
        side = parse_laterality_view(row, source, "laterality", "view", rejects, other_view="other_view")
        if side is None:
            continue
        laterality, view = side
        breast_id = f"{row['patient_id']}_{laterality}"
        try:
            cancer = int(parse_number(row, "cancer", low=0, high=1, required=True))  # type: ignore[arg-type]
            birads = parse_number(row, "BIRADS", low=0, high=6)
            # Read but unused: a garbled value still means a garbled row.
            parse_number(row, "age", integer=False, low=0, high=130)
            for column in ("biopsy", "invasive", "implant"):
                parse_number(row, column, low=0, high=1)
            for column in ("site_id", "machine_id"):
                parse_number(row, column)
        except BadValue as err:
            assembler.reject_breast(breast_id, Reject(source, "bad_label", str(err)))
            continue
        density_text = row["density"].upper()
        density = None if density_text.lower() in MISSING_VALUES else density_text
        if density is not None and density not in DENSITIES:
            assembler.reject_breast(
                breast_id, Reject(source, "bad_label", str(BadValue("density", row["density"], "A-D")))
            )
            continue
        if breast_id in labels and labels[breast_id][0] != cancer:
            assembler.reject_breast(
                breast_id,
                Reject(source, "inconsistent_breast_labels", "cancer differs between images of the same breast"),
            )
            continue
        labels[breast_id] = (cancer, birads, density)
        record = BreastRecord(
            dataset="rsna",
            breast_id=breast_id,
            patient_id=row["patient_id"],
            laterality=laterality,
            split="",
            label_malignant=cancer,
            label_source="pathology",
            density=density,
            birads=birads,
            views={},
            source=source,
            extra={"raw_ids": [row["patient_id"]]},
        )
        path = root / "train_images" / row["patient_id"] / f"{row['image_id']}.dcm"
        assembler.add_view(record, view, ViewRecord(path=str(path), source=source))
        kept = assembler.breasts.get(breast_id)
        if kept is not None:
            kept.extra["raw_ids"].append(row["image_id"])
            # The breast's density / BI-RADS: the first image that states one.
            kept.density = kept.density or density
            kept.birads = kept.birads if kept.birads is not None else birads
    records = assembler.finish()
    rejects += assembler.rejects
    records = check_files(records, rejects)
    return AdapterResult(
        records=records, rejects=rejects, label_source="pathology", inputs=count_inputs(assembler, rejects)
    )


def _int_or_text(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (0, value)
