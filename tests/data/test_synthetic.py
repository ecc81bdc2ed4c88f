"""Synthetic VinDr dataset: layout, CSV formats, DICOM tags, labels, lesion geometry, determinism."""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.spatial import ConvexHull

from mmclip_dist.config import SyntheticConfig
from mmclip_dist.data.build.dicom import decode_dicom
from mmclip_dist.data.synthetic import (
    BREAST_COLUMNS,
    CUES,
    FINDING_COLUMNS,
    _breast_geometry,
    _draw_lesion,
    _make_lesion,
    cue_aucs,
    generate_vindr_dataset,
    load_truth,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("vindr")
    cfg = SyntheticConfig(num_patients=8, seed=3, normal_fraction=0.25, test_fraction=0.25)
    return root, generate_vindr_dataset(root, cfg)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout_and_summary(dataset) -> None:
    root, summary = dataset
    assert (root / "breast-level_annotations.csv").is_file()
    assert (root / "finding_annotations.csv").is_file()
    assert (root / "metadata.csv").is_file()
    studies = sorted(p for p in (root / "images").iterdir())
    assert len(studies) == 8 and all(len(list(s.glob("*.dicom"))) == 4 for s in studies)
    assert summary.patients == 8 and summary.images == 32 and summary.test_patients == 2
    assert summary.malignant_breasts + summary.benign_breasts + summary.normal_breasts == 16
    assert summary.masses + summary.calcifications == summary.malignant_breasts + summary.benign_breasts


def test_breast_level_csv(dataset) -> None:
    root, _ = dataset
    with (root / "breast-level_annotations.csv").open() as fh:
        assert fh.readline().strip() == ",".join(BREAST_COLUMNS)
    rows = _rows(root / "breast-level_annotations.csv")
    assert len(rows) == 32
    for row in rows:
        assert HEX32.match(row["study_id"]) and HEX32.match(row["series_id"]) and HEX32.match(row["image_id"])
        assert row["laterality"] in ("L", "R") and row["view_position"] in ("CC", "MLO")
        assert re.fullmatch(r"BI-RADS [1-5]", row["breast_birads"])
        assert re.fullmatch(r"DENSITY [A-D]", row["breast_density"])
        assert row["split"] in ("training", "test")
        path = root / "images" / row["study_id"] / f"{row['image_id']}.dicom"
        assert path.is_file()
    by_study: dict[str, set] = {}
    for row in rows:
        by_study.setdefault(row["study_id"], set()).add((row["laterality"], row["view_position"], row["split"]))
    for views in by_study.values():
        assert {(lat, view) for lat, view, _ in views} == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}
        assert len({split for *_, split in views}) == 1  # one split per study
    assert sum(next(iter(v))[2] == "test" for v in by_study.values()) == 2


def test_finding_csv_and_labels_agree_with_truth(dataset) -> None:
    root, _ = dataset
    with (root / "finding_annotations.csv").open() as fh:
        assert fh.readline().strip() == ",".join(FINDING_COLUMNS)
    rows = {r["image_id"]: r for r in _rows(root / "finding_annotations.csv")}
    assert len(rows) == 32  # one finding (or "No Finding") per image here
    truth = load_truth(root)
    assert {t["pathology"] for t in truth} == {"malignant", "benign", "normal"}
    for breast in truth:
        for view, info in breast["views"].items():
            row = rows[info["image_id"]]
            assert row["view_position"] == view and row["laterality"] == breast["laterality"]
            categories = ast.literal_eval(row["finding_categories"])
            if breast["pathology"] == "normal":
                assert categories == ["No Finding"] and row["breast_birads"] == "BI-RADS 1"
                assert row["finding_birads"] == "" and row["xmin"] == row["ymax"] == ""
                continue
            expected = "Mass" if breast["kind"] == "mass" else "Suspicious Calcification"
            assert categories == [expected]
            if breast["pathology"] == "malignant":
                assert row["breast_birads"] in ("BI-RADS 4", "BI-RADS 5")
                assert row["finding_birads"] == row["breast_birads"]
            else:
                assert row["breast_birads"] in ("BI-RADS 2", "BI-RADS 3") and row["finding_birads"] == "BI-RADS 3"
            box = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 0 <= box[0] < box[2] <= int(row["width"]) and 0 <= box[1] < box[3] <= int(row["height"])
            assert box == pytest.approx(info["box"], abs=0.006)
            cx, cy = info["center"]
            assert box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
            assert 0.01 <= info["lesion_area_fraction"] <= 0.05


def test_dicom_tags(dataset) -> None:
    root, _ = dataset
    rows = _rows(root / "breast-level_annotations.csv")
    uids = set()
    for row in rows[:8]:
        ds = pydicom.dcmread(root / "images" / row["study_id"] / f"{row['image_id']}.dicom")
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
        assert (ds.Rows, ds.Columns) == (int(row["height"]), int(row["width"]))
        assert ds.ImageLaterality == row["laterality"] and ds.ViewPosition == row["view_position"]
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                        "StudyDate", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):  # fmt: skip
            assert str(ds.data_element(keyword).value).strip(), keyword
        assert float(ds.WindowWidth) > 0
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 8


def test_breast_sits_on_its_laterality_side(dataset) -> None:
    root, _ = dataset
    for row in _rows(root / "breast-level_annotations.csv"):
        img = decode_dicom(root / "images" / row["study_id"] / f"{row['image_id']}.dicom")
        w = img.pixels.shape[1]
        left, right = img.pixels[:, : w // 4].mean(), img.pixels[:, -w // 4 :].mean()
        assert (left > right) == (row["laterality"] == "L")
        # Background far from the chest wall is ~0 after the window.
        far = img.pixels[:5, -5:] if row["laterality"] == "L" else img.pixels[:5, :5]
        if row["view_position"] == "CC":
            assert far.max() < 0.01


def test_lesion_is_visible_in_both_views(dataset) -> None:
    root, _ = dataset
    for breast in load_truth(root):
        if breast["pathology"] == "normal":
            assert all(v["box"] is None for v in breast["views"].values())
            continue
        for info in breast["views"].values():
            img = decode_dicom(root / "images" / breast["study_id"] / f"{info['image_id']}.dicom").pixels
            x0, y0, x1, y1 = (int(round(v)) for v in info["box"])
            inside = img[y0:y1, x0:x1]
            # The lesion adds ~0.19 (masses) or ~0.5 (calcifications) of the window on top of the tissue.
            around = img[max(0, y0 - 30) : y1 + 30, max(0, x0 - 30) : x1 + 30]
            assert inside.max() > np.median(around) + 0.1


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    cfg = SyntheticConfig(num_patients=2, seed=11, height=160, width=120)
    generate_vindr_dataset(tmp_path / "a", cfg)
    generate_vindr_dataset(tmp_path / "b", cfg)
    generate_vindr_dataset(tmp_path / "c", cfg.model_copy(update={"seed": 12}))
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b and len(a) == 2 * 4 + 4
    assert set(a) != set(c)  # ids depend on the seed


def test_benign_and_malignant_masses_differ_in_shape_not_brightness() -> None:
    rng = np.random.default_rng(0)
    solidity: dict[bool, list[float]] = {True: [], False: []}
    brightness: dict[bool, list[float]] = {True: [], False: []}
    for i in range(16):
        malignant = i % 2 == 0
        geometry = _breast_geometry(rng, 640, 480)
        lesion = _make_lesion(rng, "mass", malignant, geometry)
        img = np.zeros((640, 480), dtype=np.float32)
        body = _draw_lesion(img, lesion, (200.0, 320.0), 0.0, 1.0, rng)
        whole = img > 0.3 * lesion.amplitude  # body plus spicules
        points = np.argwhere(whole)
        solidity[malignant].append(whole.sum() / ConvexHull(points).volume)
        ys, xs = np.nonzero(body)
        brightness[malignant].append(float(img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].mean()))
    # Spiculated outlines fill little of their convex hull; circumscribed ovals fill almost all.
    assert max(solidity[True]) < 0.75 < 0.9 < min(solidity[False])
    # The mean signal inside the body's box is drawn from one distribution for both classes.
    assert np.mean(brightness[True]) == pytest.approx(np.mean(brightness[False]), rel=0.1)


def test_benign_and_malignant_calcifications_differ_in_count_size_and_spread() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        geometry = _breast_geometry(rng, 640, 480)
        benign = _make_lesion(rng, "calcification", False, geometry)
        malignant = _make_lesion(rng, "calcification", True, geometry)
        assert 4 <= len(benign.specks) <= 8 < 18 <= len(malignant.specks)
        sizes = [math.sqrt(rx * ry) for _, _, rx, ry, _ in benign.specks]
        assert np.std(sizes) < 1e-9  # benign: uniform round specks
        assert all(rx == ry for _, _, rx, ry, _ in benign.specks)
        shapes = [rx / ry for _, _, rx, ry, _ in malignant.specks]
        assert max(shapes) > 2.0  # malignant: some linear specks
        # Same calcified area, whatever the morphology (no brightness shortcut).
        area = lambda specks: sum(math.pi * rx * ry for _, _, rx, ry, _ in specks)  # noqa: E731
        assert area(benign.specks) / benign.radius**2 == pytest.approx(area(malignant.specks) / malignant.radius**2,
                                                                        rel=0.35)  # fmt: skip


def test_no_scalar_cue_separates_the_classes(tmp_path: Path) -> None:
    # >= 1,000 lesion breasts, rendered at a small size without writing DICOMs (~10 s).
    cfg = SyntheticConfig(num_patients=520, height=320, width=240, seed=21)
    summary = generate_vindr_dataset(tmp_path, cfg, write_dicoms=False)
    assert summary.malignant_breasts + summary.benign_breasts >= 1000
    assert not list((tmp_path / "images").rglob("*.dicom"))
    assert set(summary.cue_aucs) == set(CUES)
    assert all(auc <= 0.56 for auc in summary.cue_aucs.values()), summary.cue_aucs
    # The cues are measured on the stored pixels: box area and mean intensity agree with the CSV's box.
    truth = load_truth(tmp_path)
    view = next(b for b in truth if b["pathology"] != "normal")["views"]["CC"]
    x0, y0, x1, y1 = view["box"]
    assert view["cues"]["box_area"] == pytest.approx((x1 - x0) * (y1 - y0))


def test_cue_auc_detects_a_shortcut() -> None:
    breasts = []
    for i in range(40):
        malignant = i % 2 == 0
        cues = {"box_area": 100.0 + (50.0 if malignant else 0.0) + i, "mean_intensity": 1.0, "contrast": 1.0,
                "position_x": 0.5, "position_y": 0.5}  # fmt: skip
        breasts.append({"pathology": "malignant" if malignant else "benign", "kind": "mass",
                        "views": {"CC": {"cues": cues}, "MLO": {"cues": cues}}})  # fmt: skip
    aucs = cue_aucs(breasts)
    assert aucs["box_area"] > 0.9 and aucs["mean_intensity"] == 0.5 and aucs["lesion_type"] == 0.5


def test_generation_is_fast_enough(tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    generate_vindr_dataset(tmp_path, SyntheticConfig(num_patients=4, seed=0))
    # 16 DICOMs at 640x480 (the debug set's 2,560 take ~40 s of its 10-minute budget).
    assert time.perf_counter() - start < 16 * 60 / 640 * 4  # x4 headroom: CI machines are shared


def test_rejects_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_patients"):
        generate_vindr_dataset(tmp_path, SyntheticConfig(num_patients=0))
    with pytest.raises(ValueError, match="too small"):
        generate_vindr_dataset(tmp_path, SyntheticConfig(num_patients=1, height=32, width=32))
