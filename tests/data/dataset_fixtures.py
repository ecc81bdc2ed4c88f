"""Tiny look-alikes of the public datasets' CSVs and folder layouts (DATASETS.md), for adapter/build tests.

Each writer takes explicit rows so a test shows exactly which values it feeds the adapter; images are
real little DICOMs (``dicom_fixtures.write_dicom``) with a bright "breast" on the chest-wall side.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from dicom_fixtures import write_dicom

VINDR_IMAGE_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                       "breast_birads", "breast_density", "split"]
VINDR_FINDING_COLUMNS = VINDR_IMAGE_COLUMNS[:-1] + ["finding_categories", "finding_birads", "xmin", "ymin",
                                                     "xmax", "ymax", "split"]
RSNA_COLUMNS = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
                "BIRADS", "implant", "density", "machine_id", "difficult_negative_case"]
CBIS_MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                     "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                     "image file path", "cropped image file path", "ROI mask file path"]
CBIS_CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                     "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                     "image file path", "cropped image file path", "ROI mask file path"]


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def breast_pixels(height: int = 64, width: int = 48, laterality: str = "L", seed: int = 0) -> np.ndarray:
    """12-bit image: a textured half-ellipse of tissue against the chest wall side, dark background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx = 0.0 if laterality == "L" else width - 1.0
    inside = ((x - cx) / (0.8 * width)) ** 2 + ((y - height / 2) / (0.45 * height)) ** 2 <= 1.0
    img = np.where(inside, 1500 + 1500 * rng.random((height, width)), 0)
    return img.astype(np.uint16)


def write_image(path: Path, laterality: str = "L", view: str = "CC", height: int = 64, width: int = 48,
                seed: int = 0, **tags: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, breast_pixels(height, width, laterality, seed), laterality=laterality, view=view,
                       extra=tags or None)


def vindr_rows(study: str, split: str = "training", birads: str = "BI-RADS 4", density: str = "DENSITY B",
               lateralities: str = "LR", height: int = 64, width: int = 48) -> list[dict[str, Any]]:
    """The four breast-level rows of one study (image ids ``<study>-<lat><view>``)."""
    rows = []
    for lat in lateralities:
        for view in ("CC", "MLO"):
            rows.append({"study_id": study, "series_id": f"{study}-s{lat}", "image_id": f"{study}-{lat}{view}",
                         "laterality": lat, "view_position": view, "height": height, "width": width,
                         "breast_birads": birads, "breast_density": density, "split": split})
    return rows


def no_finding(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "finding_categories": "['No Finding']", "finding_birads": ""}


def finding(row: dict[str, Any], box: tuple[Any, Any, Any, Any], categories: str = "['Mass']",
            birads: str = "BI-RADS 4") -> dict[str, Any]:
    return {**row, "finding_categories": categories, "finding_birads": birads,
            "xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3]}


def write_vindr(root: Path, image_rows: list[dict[str, Any]], finding_rows: list[dict[str, Any]],
                images: bool = True) -> Path:
    """CSVs + one DICOM per image row (skipped for rows whose image_id starts with 'nofile')."""
    write_csv(root / "breast-level_annotations.csv", VINDR_IMAGE_COLUMNS, image_rows)
    write_csv(root / "finding_annotations.csv", VINDR_FINDING_COLUMNS, finding_rows)
    if images:
        for i, row in enumerate(image_rows):
            if str(row["image_id"]).startswith("nofile"):
                continue
            path = root / "images" / str(row["study_id"]) / f"{row['image_id']}.dicom"
            if not path.exists():
                lat = row["laterality"] if row["laterality"] in ("L", "R") else "L"
                write_image(path, lat, str(row["view_position"]), int(row["height"]), int(row["width"]), seed=i)
    return root
