"""Synthetic VinDr-Mammo look-alike: real DICOM files and CSVs in the exact VinDr v1.0.0 layout.

Used by the debug mode and the tests, where the real dataset cannot be downloaded. Every breast has a
ground-truth pathology, and benign and malignant lesions differ only in *morphology*, so a model that
learns from these images has to look at the region, as MM-CLIP should:

* masses: benign = round/oval, smooth circumscribed margin; malignant = irregular outline, indistinct
  margin and spiculations radiating outwards;
* calcifications: benign = a few round, uniform, scattered specks; malignant = many fine pleomorphic
  and linear specks along branching ducts.

No scalar cue gives the label away: the finding's box measures the lesion *body* as BI-RADS sizes it
(spicules may extend past it), and box area, the mean signal inside the box, calcified area, position
and the mass/calcification mix are drawn from the same distributions for both classes. The generator
measures each cue on the stored pixels of every lesion view (``synthetic_truth.json``, ``cues``) and
reports the AUC of each alone (``cue_aucs``; ~0.5 = no shortcut). An earlier version boxed the
spicules too, so box area alone separated the classes with AUC 0.80.

A lesion lives at one hidden 3D position inside the breast, so it appears in both CC and MLO at
consistent depths (MLO shows a different, oblique projection of the other two coordinates). Labels go
into the CSVs the VinDr way (BI-RADS, no pathology column); the true pathology and lesion geometry are
written to ``synthetic_truth.json`` beside the CSVs, which VinDr readers ignore.

Layout (DATASETS.md): ``breast-level_annotations.csv``, ``finding_annotations.csv``, ``metadata.csv``,
``images/<study_id>/<image_id>.dicom``. The same seed gives byte-identical files; each patient draws
from its own random stream, so changing ``num_patients`` keeps the images of the others.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from mmclip_dist.config import SyntheticConfig

BREAST_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]  # fmt: skip
FINDING_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]  # fmt: skip
METADATA_COLUMNS = [
    "SOP Instance UID", "Series Instance UID", "Patient's Age", "View Position", "Image Laterality",
    "Photometric Interpretation", "Rows", "Columns", "Bits Stored", "Window Center", "Window Width",
    "Manufacturer", "Manufacturer's Model Name",
]  # fmt: skip
TRUTH_FILE = "synthetic_truth.json"
MAMMO_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.2")  # Digital Mammography X-Ray Image Storage - For Presentation
DENSITIES = ("A", "B", "C", "D")
DENSITY_P = (0.1, 0.4, 0.4, 0.1)  # roughly the screening population (and VinDr's) mix
# (manufacturer, model, share, bits stored): VinDr's scanner mix, DATASETS.md.
SCANNERS = (
    ("SIEMENS", "Mammomat Inspiration", 0.76, 12),
    ("Planmed", "Planmed Nuance", 0.19, 14),
    ("IMS GIOTTO", "GIOTTO IMAGE 3DL", 0.05, 12),
)
LAST_NAMES = ("NGUYEN", "TRAN", "LE", "PHAM", "HOANG", "SMITH", "GARCIA", "MULLER", "ROSSI", "KOWALSKI")
FIRST_NAMES = ("AN", "BICH", "CHI", "DUNG", "HOA", "MARY", "ANNA", "LUCIA", "EVA", "SOFIA")
BOX_MARGIN = 2.0  # pixels added around the tight lesion box, like a reader's hand-drawn box
UID_PREFIX = "1.2.826.0.1.3680043.10.1337."  # placeholder root for synthetic UIDs


@dataclass
class SyntheticSummary:
    """What ``generate_vindr_dataset`` wrote."""

    root: Path
    patients: int
    images: int
    malignant_breasts: int
    benign_breasts: int
    normal_breasts: int
    masses: int = 0
    calcifications: int = 0
    test_patients: int = 0
    cue_aucs: dict[str, float] = field(default_factory=dict)  # see ``cue_aucs``


@dataclass
class _Lesion:
    """Shape parameters shared by both views of a breast (sizes in pixels, angles in radians)."""

    kind: str  # "mass" | "calcification"
    malignant: bool
    radius: float  # mass core radius / calcification cluster radius
    aspect: float = 1.0
    angle: float = 0.0
    harmonics: list[tuple[int, float, float]] = field(default_factory=list)  # (k, amplitude, phase)
    spicules: list[tuple[float, float, float]] = field(default_factory=list)  # (angle, length, base half-width)
    specks: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # dx, dy, rx, ry, angle
    amplitude: float = 600.0


def generate_vindr_dataset(root: Path, cfg: SyntheticConfig, *, write_dicoms: bool = True) -> SyntheticSummary:
    """Write ``cfg.num_patients`` studies (4 images each) under ``root`` in the VinDr-Mammo layout.

    ``write_dicoms=False`` renders every image (so the cue measurements are the same) but writes only
    the CSVs and the truth file: a quick way to check the data's statistics on thousands of breasts.
    """
    root = Path(root)
    if cfg.num_patients < 1:
        raise ValueError(f"synthetic.num_patients must be >= 1, got {cfg.num_patients}")
    if cfg.height < 64 or cfg.width < 48:
        raise ValueError(f"synthetic image size {cfg.height}x{cfg.width} is too small (min 64x48)")
    (root / "images").mkdir(parents=True, exist_ok=True)

    n_test = int(round(cfg.num_patients * cfg.test_fraction))
    order = np.random.default_rng([cfg.seed, 7919]).permutation(cfg.num_patients)
    test_patients = set(order[:n_test].tolist())

    breast_rows: list[dict[str, Any]] = []
    finding_rows: list[dict[str, Any]] = []
    meta_rows: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    counts = {"malignant": 0, "benign": 0, "normal": 0, "mass": 0, "calcification": 0}
    for p in range(cfg.num_patients):
        split = "test" if p in test_patients else "training"
        _generate_patient(root, cfg, p, split, breast_rows, finding_rows, meta_rows, truth, counts, write_dicoms)

    _write_csv(root / "breast-level_annotations.csv", BREAST_COLUMNS, breast_rows)
    _write_csv(root / "finding_annotations.csv", FINDING_COLUMNS, finding_rows)
    _write_csv(root / "metadata.csv", METADATA_COLUMNS, meta_rows)
    (root / TRUTH_FILE).write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return SyntheticSummary(
        root=root,
        patients=cfg.num_patients,
        images=len(breast_rows),
        malignant_breasts=counts["malignant"],
        benign_breasts=counts["benign"],
        normal_breasts=counts["normal"],
        masses=counts["mass"],
        calcifications=counts["calcification"],
        test_patients=n_test,
        cue_aucs=cue_aucs(truth),
    )


# --------------------------------------------------------------------------------------------------
# one patient


def _hex_id(seed: int, *parts: object) -> str:
    """32-hex ids like VinDr's (md5 of anonymised UIDs), deterministic in the seed."""
    return hashlib.md5(":".join(["vindr-synthetic", str(seed), *map(str, parts)]).encode()).hexdigest()


def _generate_patient(
    root: Path,
    cfg: SyntheticConfig,
    p: int,
    split: str,
    breast_rows: list,
    finding_rows: list,
    meta_rows: list,
    truth: list,
    counts: dict[str, int],
    write_dicoms: bool = True,
) -> None:
    rng = np.random.default_rng([cfg.seed, p])
    h, w = cfg.height, cfg.width
    study_id = _hex_id(cfg.seed, "study", p)
    density = DENSITIES[int(rng.choice(4, p=DENSITY_P))]
    scanner = SCANNERS[int(rng.choice(len(SCANNERS), p=[s[2] for s in SCANNERS]))]
    age = int(rng.integers(40, 76))
    study_date = f"{int(rng.integers(2018, 2021))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    patient = {
        "name": f"{LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}^{FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]}",
        "id": f"{int(rng.integers(10**7, 10**8))}",
        "birth": f"{int(study_date[:4]) - age}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "accession": f"{int(rng.integers(10**9, 10**10))}",
        "age": age,
        "date": study_date,
        "study_uid": generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(cfg.seed), "study", str(p)]),
    }
    study_dir = root / "images" / study_id
    if write_dicoms:
        study_dir.mkdir(parents=True, exist_ok=True)

    for laterality in ("L", "R"):
        status = "normal"
        if rng.random() >= cfg.normal_fraction:
            status = "malignant" if rng.random() < 0.5 else "benign"
        counts[status] += 1
        kind = None
        if status != "normal":
            kind = "mass" if rng.random() < 0.6 else "calcification"
            counts[kind] += 1
        if status == "malignant":
            breast_birads = finding_birads = f"BI-RADS {int(rng.choice([4, 5]))}"
        elif status == "benign":
            breast_birads, finding_birads = f"BI-RADS {int(rng.choice([2, 3]))}", "BI-RADS 3"
        else:
            breast_birads, finding_birads = "BI-RADS 1", ""

        geometry = _breast_geometry(rng, h, w)
        lesion = _make_lesion(rng, kind, status == "malignant", geometry) if kind else None
        # Hidden 3D position: depth along the nipple axis, medio-lateral and cranio-caudal offsets.
        depth, ml, cc = rng.uniform(0.3, 0.65), rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.45)
        breast_truth: dict[str, Any] = {
            "study_id": study_id, "laterality": laterality, "pathology": status, "kind": kind or "none",
            "density": density, "views": {},
        }  # fmt: skip
        for view in ("CC", "MLO"):
            image_id = _hex_id(cfg.seed, "image", p, laterality, view)
            series_id = _hex_id(cfg.seed, "series", p, laterality, view)
            pixels, breast_mask = _render_breast(rng, geometry[view], density, h, w)
            box = None
            area_fraction = 0.0
            center = None
            if lesion is not None:
                center = _lesion_center(geometry[view], view, depth, ml, cc)
                # MLO is another projection: the same lesion appears rotated and slightly rescaled.
                turn = 0.0 if view == "CC" else float(rng.uniform(-0.6, 0.6))
                zoom = 1.0 if view == "CC" else float(rng.uniform(0.92, 1.08))
                lesion_mask = _draw_lesion(pixels, lesion, center, turn, zoom, rng)
                ys, xs = np.nonzero(lesion_mask)
                area_fraction = float(lesion_mask.sum()) / float(breast_mask.sum())
                box = [
                    max(0.0, xs.min() - BOX_MARGIN), max(0.0, ys.min() - BOX_MARGIN),
                    min(float(w), xs.max() + 1 + BOX_MARGIN), min(float(h), ys.max() + 1 + BOX_MARGIN),
                ]  # fmt: skip
            stored = _to_stored(pixels, scanner[3])
            # Measured on the stored pixels before the laterality flip (chest wall left, as in the shards).
            cues = _measure_cues(stored, breast_mask, box, scanner[3]) if box is not None else None
            if laterality == "R":
                # Rendered with the chest wall on the left; a right breast has it on the right.
                stored = stored[:, ::-1]
                if box is not None:
                    box = [w - box[2], box[1], w - box[0], box[3]]
                if center is not None:
                    center = (w - center[0], center[1])
            window = _window(scanner[3])
            if write_dicoms:
                ds = _dicom_dataset(stored, cfg.seed, p, laterality, view, patient, scanner, window)
                ds.save_as(study_dir / f"{image_id}.dicom", enforce_file_format=True)

            common = {
                "study_id": study_id, "series_id": series_id, "image_id": image_id,
                "laterality": laterality, "view_position": view, "height": h, "width": w,
                "breast_birads": breast_birads, "breast_density": f"DENSITY {density}",
            }  # fmt: skip
            breast_rows.append({**common, "split": split})
            if box is None:
                finding = {"finding_categories": "['No Finding']", "finding_birads": "", "xmin": "", "ymin": "",
                           "xmax": "", "ymax": ""}  # fmt: skip
            else:
                category = "Mass" if kind == "mass" else "Suspicious Calcification"
                finding = {"finding_categories": str([category]), "finding_birads": finding_birads,
                           **{k: f"{v:.2f}" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)}}  # fmt: skip
            finding_rows.append({**common, **finding, "split": split})
            meta_rows.append({
                "SOP Instance UID": image_id, "Series Instance UID": series_id,
                "Patient's Age": f"{age:03d}Y", "View Position": view, "Image Laterality": laterality,
                "Photometric Interpretation": "MONOCHROME2", "Rows": h, "Columns": w, "Bits Stored": scanner[3],
                "Window Center": window[0], "Window Width": window[1], "Manufacturer": scanner[0],
                "Manufacturer's Model Name": scanner[1],
            })  # fmt: skip
            breast_truth["views"][view] = {
                "image_id": image_id, "box": box, "lesion_area_fraction": round(area_fraction, 6),
                "center": None if center is None else [round(float(c), 3) for c in center],
                "cues": cues,
            }  # fmt: skip
        truth.append(breast_truth)


# --------------------------------------------------------------------------------------------------
# breast anatomy (rendered with the chest wall on the left, x = 0)


def _breast_geometry(rng: np.random.Generator, h: int, w: int) -> dict[str, dict[str, float]]:
    depth = rng.uniform(0.62, 0.8) * w
    cc = {"depth": depth, "cy": rng.uniform(0.46, 0.54) * h, "half": rng.uniform(0.36, 0.43) * h, "shear": 0.0}
    mlo = {
        "depth": depth * rng.uniform(0.95, 1.05),
        "cy": rng.uniform(0.52, 0.58) * h,
        "half": rng.uniform(0.38, 0.42) * h,
        # The nipple points slightly downwards on an MLO: the breast axis is sheared.
        "shear": rng.uniform(0.1, 0.25),
        "pect_w": rng.uniform(0.22, 0.36) * w,
        "pect_h": rng.uniform(0.45, 0.62) * h,
    }
    return {"CC": cc, "MLO": mlo}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Noise with features ~h/cells wide: a coarse random grid upsampled bicubically (cheap)."""
    gh, gw = max(2, cells), max(2, round(cells * w / h))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _render_breast(
    rng: np.random.Generator, g: dict[str, float], density: str, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Float image in stored-value units (12-bit scale) and the boolean breast mask."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    yy = (y - g["cy"] - g["shear"] * x) / g["half"]
    xx = x / g["depth"]
    # A half "super-ellipse": flatter than an ellipse near the chest wall, round at the nipple.
    field_ = xx**2.2 + yy**2
    breast = field_ <= 1.0
    pect = None
    if "pect_w" in g:
        pect = x / g["pect_w"] + y / g["pect_h"] < 1.0
        axilla = (x < 0.45 * g["pect_w"] + 0.2 * g["depth"]) & (y < g["cy"])
        breast = breast | pect | axilla
    # Tissue gets thinner towards the skin line, so the periphery is darker than the core.
    thickness = np.clip((1.0 - field_) * 3.0, 0.0, 1.0) ** 0.5
    thickness = np.where(breast & (field_ > 1.0), 0.8, thickness)

    texture = (
        _smooth_noise(rng, h, w, 6) + 0.6 * _smooth_noise(rng, h, w, 14) + 0.35 * _smooth_noise(rng, h, w, 40)
    ) / 1.3
    prior = np.exp(-(((xx - 0.4) ** 2) / 0.12 + (yy**2) / 0.45))  # glandular tissue sits behind the nipple
    threshold = {"A": 1.1, "B": 0.55, "C": 0.05, "D": -0.45}[density]
    glandular = np.clip((texture + 1.2 * prior - 0.6 - threshold) / 0.8, 0.0, 1.0)
    img = 1000.0 + 450.0 * thickness + 650.0 * glandular * thickness
    if pect is not None:
        img = np.where(pect, 2300.0 + 150.0 * _smooth_noise(rng, h, w, 10), img)
    img += rng.normal(0.0, 12.0, size=(h, w)).astype(np.float32)
    img = np.where(breast, img, rng.uniform(0.0, 6.0, size=(h, w)).astype(np.float32))
    return img.astype(np.float32), breast


def _lesion_center(g: dict[str, float], view: str, depth: float, ml: float, cc: float) -> tuple[float, float]:
    """Project the hidden (depth, medio-lateral, cranio-caudal) position onto one view."""
    x = depth * g["depth"]
    if view == "CC":
        offset = ml  # a CC projection looks from above: we see medio-lateral spread
    else:
        offset = 0.7 * cc + 0.5 * ml  # the 45-degree oblique mixes both axes
        x *= 1.0 + 0.05 * cc
    # Keep clear of the skin line: at depth fraction d the breast's half-height is ~sqrt(1 - d^2.2).
    reach = math.sqrt(max(0.0, 1.0 - (x / g["depth"]) ** 2.2))
    offset = float(np.clip(offset, -0.55, 0.55)) * reach
    y = g["cy"] + g["shear"] * x + offset * g["half"]
    if "pect_w" in g and x / g["pect_w"] + y / g["pect_h"] < 1.25:
        # Never inside the pectoral muscle on MLO: slide caudally along the same depth.
        y = g["pect_h"] * (1.25 - x / g["pect_w"])
    return float(x), float(y)


# --------------------------------------------------------------------------------------------------
# lesions


def _breast_area_estimate(g: dict[str, float]) -> float:
    # Area of {x^2.2 + y^2 <= 1, x >= 0} is ~0.80 of the half-plane unit box times 2 (half-heights).
    return 2.0 * 0.80 * g["depth"] * g["half"]


# Shared by both classes (only morphology may differ): box area as a fraction of the breast, the
# lesion's mean signal inside its box (12-bit units above the tissue), calcification amplitude and the
# calcified fraction of a cluster's box.
BOX_FRACTION = (0.03, 0.055)
MASS_BOX_SIGNAL = (330.0, 470.0)
CALC_AMPLITUDE = (1500.0, 1800.0)
CALC_FILL = (0.035, 0.06)


def _mass_boundary(lesion: _Lesion, phi: np.ndarray) -> np.ndarray:
    """Radius of the mass body along direction ``phi`` (lesion frame): an ellipse, irregular if malignant."""
    boundary = lesion.radius / np.sqrt(np.cos(phi) ** 2 + (np.sin(phi) / lesion.aspect) ** 2)
    if lesion.harmonics:
        boundary = boundary * (1.0 + sum(a * np.cos(k * phi + ph) for k, a, ph in lesion.harmonics))
    return boundary


def _unit_body_box_area(lesion: _Lesion) -> float:
    """Area of the axis-aligned box around the mass body at ``radius = 1`` (no turn, no zoom)."""
    saved, lesion.radius = lesion.radius, 1.0
    phi = np.linspace(0.0, 2 * math.pi, 720, endpoint=False)
    r = _mass_boundary(lesion, phi)
    lesion.radius = saved
    u, v = r * np.cos(phi), r * np.sin(phi)
    dx = u * math.cos(lesion.angle) - v * math.sin(lesion.angle)
    dy = u * math.sin(lesion.angle) + v * math.cos(lesion.angle)
    return float(np.ptp(dx) * np.ptp(dy))


def _make_lesion(rng: np.random.Generator, kind: str, malignant: bool, geometry: dict) -> _Lesion:
    """Lesion parameters. Box area, signal and position share one distribution across classes, so a model
    can only tell benign from malignant by morphology; ``cue_aucs`` measures that on the rendered pixels."""
    area = _breast_area_estimate(geometry["CC"])
    box_area = float(rng.uniform(*BOX_FRACTION)) * area
    if kind == "mass":
        aspect = float(rng.uniform(0.65, 1.0))
        lesion = _Lesion("mass", malignant, 1.0, aspect, float(rng.uniform(0, math.pi)))
        if malignant:
            lesion.harmonics = [
                (k, float(rng.uniform(0.06, 0.13)), float(rng.uniform(0, 2 * math.pi))) for k in (3, 5, 7)
            ]
        # The box measures the body (BI-RADS size), so the body is scaled to the drawn box area.
        lesion.radius = math.sqrt(box_area / _unit_body_box_area(lesion))
        if malignant:
            n = int(rng.integers(9, 15))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n) + np.arange(n) * 2 * math.pi / n) % (2 * math.pi)
            lesion.spicules = [
                (float(a), float(rng.uniform(0.7, 1.3) * lesion.radius), float(max(1.3, 0.11 * lesion.radius)))
                for a in angles
            ]
        # Amplitude set so the mean signal inside the box is the drawn one, whatever the shape fills.
        lesion.amplitude = float(rng.uniform(*MASS_BOX_SIGNAL)) / _mass_box_fill(lesion)
        return lesion

    # Calcifications: the box is the cluster's extent (a disk of radius R); both classes fill it with
    # the same calcified area, as few round scattered specks (benign) or many fine linear and
    # pleomorphic specks along branching ducts (malignant).
    radius = math.sqrt(box_area) / 2.0
    lesion = _Lesion("calcification", malignant, radius, amplitude=float(rng.uniform(*CALC_AMPLITUDE)))
    target = float(rng.uniform(*CALC_FILL)) * box_area
    if malignant:
        n = int(rng.integers(18, 30))
        k = int(rng.integers(2, 4))
        start = rng.uniform(0, 2 * math.pi)
        branches = [(start + j * 2 * math.pi / k + rng.normal(0, 0.4), rng.uniform(0.6, 0.95) * radius)
                    for j in range(k)]  # fmt: skip
        for i in range(n):
            theta, length = branches[i % len(branches)]
            t = rng.uniform(0.0, 1.0)
            dx = math.cos(theta) * t * length + rng.normal(0, 0.05 * radius)
            dy = math.sin(theta) * t * length + rng.normal(0, 0.05 * radius)
            if rng.random() < 0.5:  # linear: elongated along the duct
                rx, ry, ang = rng.uniform(2.2, 3.6), rng.uniform(0.7, 1.0), theta + rng.normal(0, 0.3)
            else:  # pleomorphic dots of varying size and shape
                rx, ry, ang = rng.uniform(0.8, 1.8), rng.uniform(0.7, 1.4), rng.uniform(0, math.pi)
            lesion.specks.append((float(dx), float(dy), float(rx), float(ry), float(ang)))
    else:
        n = int(rng.integers(5, 9))
        placed: list[tuple[float, float]] = []
        tries = 0
        while len(placed) < n and tries < 500:
            tries += 1
            r, a = 0.85 * radius * math.sqrt(rng.uniform(0.0, 1.0)), rng.uniform(0, 2 * math.pi)
            cand = (r * math.cos(a), r * math.sin(a))
            if all(math.hypot(cand[0] - q[0], cand[1] - q[1]) > 0.45 * radius for q in placed):
                placed.append(cand)
        lesion.specks = [(dx, dy, 1.0, 1.0, 0.0) for dx, dy in placed]
    # Scale speck sizes (not their count or layout) so both classes calcify the same area.
    scale = math.sqrt(target / sum(math.pi * rx * ry for _, _, rx, ry, _ in lesion.specks))
    lesion.specks = [(dx, dy, rx * scale, ry * scale, ang) for dx, dy, rx, ry, ang in lesion.specks]
    return lesion


def _mass_box_fill(lesion: _Lesion) -> float:
    """Mean of the unit-amplitude mass profile inside the body's box (no turn, no zoom)."""
    reach = lesion.radius * (2.4 if lesion.spicules else 1.3) + 4
    y, x = np.mgrid[-reach:reach:0.5, -reach:reach:0.5].astype(np.float32)
    core, rays = _mass_profile(lesion, x, y, 0.0)
    ys, xs = np.nonzero(core > 0.3)
    inside = np.maximum(core, rays)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return float(inside.mean())


def _draw_lesion(
    img: np.ndarray, lesion: _Lesion, center: tuple[float, float], turn: float, zoom: float, rng: np.random.Generator
) -> np.ndarray:
    """Add the lesion to ``img`` in place; returns the boolean mask of the lesion *body* (full image size):
    a mass without its spicules, a calcification cluster's disk. Its bounding box is the finding's box."""
    h, w = img.shape
    cx, cy = center
    reach = lesion.radius * zoom * (2.4 if lesion.spicules else 1.3) + 6
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (x - cx) / zoom, (y - cy) / zoom
    mask = np.zeros((h, w), dtype=bool)
    if lesion.kind == "mass":
        core, rays = _mass_profile(lesion, dx, dy, turn)
        img[y0:y1, x0:x1] += np.maximum(core, rays) * lesion.amplitude
        mask[y0:y1, x0:x1] = core > 0.3
        return mask
    value = np.zeros_like(dx)
    for sx, sy, rx, ry, ang in lesion.specks:
        c, s = math.cos(turn), math.sin(turn)
        px, py = c * sx - s * sy, s * sx + c * sy
        a = ang + turn
        u = (dx - px) * math.cos(a) + (dy - py) * math.sin(a)
        v = -(dx - px) * math.sin(a) + (dy - py) * math.cos(a)
        r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        value = np.maximum(value, np.clip(1.6 - 1.2 * r, 0.0, 1.0))  # a flat top, ~1 px soft edge
    img[y0:y1, x0:x1] += value * lesion.amplitude
    # The lesion region of a cluster is the disk it occupies (what a reader would outline).
    mask[y0:y1, x0:x1] = (dx**2 + dy**2) <= lesion.radius**2
    return mask


def _mass_profile(lesion: _Lesion, dx: np.ndarray, dy: np.ndarray, turn: float) -> tuple[np.ndarray, np.ndarray]:
    """Mass intensity in [0, 1] as (body, spicules): a gently domed core and, if malignant, its rays."""
    angle = lesion.angle + turn
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    r = np.sqrt(u**2 + v**2) + 1e-6
    phi = np.arctan2(v, u)
    boundary = _mass_boundary(lesion, phi)
    edge = 2.5 if lesion.malignant else 0.8  # indistinct vs sharp, circumscribed margin
    dome = 0.9 + 0.1 * np.clip(1.0 - (r / boundary) ** 2, 0.0, 1.0)
    core = np.clip((boundary - r) / edge + 0.5, 0.0, 1.0) * dome
    rays = np.zeros_like(core)
    for theta, length, half_width in lesion.spicules:
        a = theta + turn
        along = dx * math.cos(a) + dy * math.sin(a)
        across = np.abs(-dx * math.sin(a) + dy * math.cos(a))
        start = 0.7 * lesion.radius
        s = (along - start) / (length + 0.3 * lesion.radius)
        width = half_width * (1.0 - 0.75 * np.clip(s, 0.0, 1.0))
        inside = (s >= 0.0) & (s <= 1.0)
        ray = np.clip(width - across + 0.5, 0.0, 1.0) * (0.85 - 0.35 * np.clip(s, 0.0, 1.0))
        rays = np.maximum(rays, np.where(inside, ray, 0.0))
    return core, rays


# --------------------------------------------------------------------------------------------------
# DICOM and CSV writing


def _to_stored(img: np.ndarray, bits_stored: int) -> np.ndarray:
    scale = 2 ** (bits_stored - 12)  # 14-bit scanners store the same signal 4x finer
    return np.clip(np.round(img * scale), 0, 2**bits_stored - 1).astype(np.uint16)


def _window(bits_stored: int) -> tuple[float, float]:
    # Covers fat (~1000) to calcifications (~3800) on the 12-bit scale; background falls below it.
    scale = 2 ** (bits_stored - 12)
    return 2200.0 * scale, 3200.0 * scale


def _dicom_dataset(
    stored: np.ndarray,
    seed: int,
    p: int,
    laterality: str,
    view: str,
    patient: dict[str, Any],
    scanner: tuple[str, str, float, int],
    window: tuple[float, float],
) -> Dataset:
    entropy = [str(seed), str(p), laterality, view]
    sop_uid = generate_uid(prefix=UID_PREFIX, entropy_srcs=[*entropy, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MAMMO_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = MAMMO_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient["date"]
    ds.StudyTime = "093000"
    ds.AccessionNumber = patient["accession"]
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = scanner[0]
    ds.ManufacturerModelName = scanner[1]
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth"]
    ds.PatientSex = "F"
    ds.PatientAge = f"{patient['age']:03d}Y"
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = patient["study_uid"]
    ds.SeriesInstanceUID = generate_uid(prefix=UID_PREFIX, entropy_srcs=[*entropy, "series"])
    ds.StudyID = "1"
    ds.SeriesNumber = 1 if laterality == "R" else 2
    ds.InstanceNumber = 1 if view == "CC" else 2
    ds.ImageLaterality = laterality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = scanner[3]
    ds.HighBit = scanner[3] - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = f"{window[0]:g}"
    ds.WindowWidth = f"{window[1]:g}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# shortcut check: how well does each scalar cue alone separate benign from malignant?

CUES = ("box_area", "mean_intensity", "contrast", "position_x", "position_y", "lesion_type")


def _measure_cues(stored: np.ndarray, breast: np.ndarray, box: list[float], bits_stored: int) -> dict[str, float]:
    """Box area, mean value inside the box and the box-minus-surround contrast (12-bit units), box centre.

    The surround is the breast tissue in a frame half the box's size around it, where spicules reach.
    """
    h, w = stored.shape
    img = stored.astype(np.float32) / 2 ** (bits_stored - 12)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = img[y0:y1, x0:x1]
    mx, my = (x1 - x0) // 2, (y1 - y0) // 2
    fx0, fy0, fx1, fy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    frame = np.zeros((h, w), dtype=bool)
    frame[fy0:fy1, fx0:fx1] = True
    frame[y0:y1, x0:x1] = False
    frame &= breast
    surround = float(img[frame].mean()) if frame.any() else float(inside.mean())
    return {
        "box_area": float((box[2] - box[0]) * (box[3] - box[1])),
        "mean_intensity": round(float(inside.mean()), 3),
        "contrast": round(float(inside.mean()) - surround, 3),
        "position_x": round((box[0] + box[2]) / 2 / w, 5),
        "position_y": round((box[1] + box[3]) / 2 / h, 5),
    }


def cue_aucs(truth: list[dict[str, Any]]) -> dict[str, float]:
    """AUC of each scalar cue alone for malignant vs benign breasts (mean over the breast's views).

    Reported as ``max(AUC, 1 - AUC)``: a cue that separates the classes in either direction is a
    shortcut. ~0.5 means the cue carries no label; an AUC near 1 means a model could skip the morphology.
    """
    from sklearn.metrics import roc_auc_score

    labels: list[int] = []
    values: dict[str, list[float]] = {c: [] for c in CUES}
    for breast in truth:
        if breast["pathology"] == "normal":
            continue
        views = [v["cues"] for v in breast["views"].values() if v.get("cues")]
        if not views:
            continue
        labels.append(int(breast["pathology"] == "malignant"))
        for cue in CUES[:-1]:
            values[cue].append(float(np.mean([v[cue] for v in views])))
        values["lesion_type"].append(float(breast["kind"] == "mass"))
    if len(set(labels)) < 2:
        return {}
    out = {}
    for cue, vals in values.items():
        auc = float(roc_auc_score(labels, vals))
        out[cue] = round(max(auc, 1.0 - auc), 4)
    return out


def format_cue_aucs(aucs: dict[str, float]) -> str:
    """``box_area 0.503, mean_intensity 0.500, ...`` for logs and the debug summary."""
    return ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()) or "n/a (one class only)"


def load_truth(root: Path) -> list[dict[str, Any]]:
    """Ground truth written beside the CSVs: per breast pathology, lesion kind, boxes, area fractions."""
    return json.loads((Path(root) / TRUTH_FILE).read_text())


def summary_dict(summary: SyntheticSummary) -> dict[str, Any]:
    """JSON-able form of a summary (for CLI output and logs)."""
    out = asdict(summary)
    out["root"] = str(summary.root)
    return out
