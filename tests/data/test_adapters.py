"""Dataset adapters on tiny look-alike CSVs: records, labels, boxes, and one named reject per bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mmclip_devtools.fixtures.datasets import finding, no_finding, vindr_rows, write_csv, write_vindr
from mmclip_dist.config import ShardsConfig
from mmclip_dist.data.build.adapters import AdapterError, parse_laterality_view, read_dataset
from mmclip_dist.data.build.adapters.vindr import birads_proxy, parse_birads, parse_categories, parse_density
from mmclip_dist.data.build.records import Reject


def _vindr_cfg(root: Path, **kw) -> ShardsConfig:
    return ShardsConfig(dataset="vindr", input=str(root), **kw)


def test_parse_laterality_view_values_and_named_rejects() -> None:
    row = {"side": " left ", "proj": "mlo", "bad_side": "X", "at": "AT"}
    rejects: list[Reject] = []
    assert parse_laterality_view(row, "a.csv:2", "side", "proj", rejects) == ("L", "mlo")
    assert parse_laterality_view(row, "a.csv:3", "bad_side", "at", rejects) is None
    assert parse_laterality_view(row, "a.csv:4", "side", "at", rejects) is None
    assert parse_laterality_view(row, "a.csv:5", "side", "at", rejects, other_view="other_view") is None
    assert rejects == [
        Reject("a.csv:3", "bad_laterality", "bad_side 'X' is not L/R (or LEFT/RIGHT)"),
        Reject("a.csv:4", "bad_view", "at 'AT' is not CC or MLO"),
        Reject("a.csv:5", "other_view", "at 'AT' is not CC or MLO"),
    ]


def test_vindr_value_parsers() -> None:
    assert parse_birads("BI-RADS 4") == 4
    assert parse_birads("4A") == 4
    assert parse_density("DENSITY C") == "C"
    assert parse_density("") is None
    assert parse_categories("['Suspicious Calcification', 'Mass']") == ["Suspicious Calcification", "Mass"]
    assert parse_categories("Mass") == ["Mass"]
    with pytest.raises(ValueError):
        parse_birads("BI-RADS X")
    with pytest.raises(ValueError):
        parse_density("DENSITY E")


@pytest.mark.parametrize(
    ("birads", "mal_min", "ben_max", "expected"),
    [(5, 4, 3, 1), (4, 4, 3, 1), (3, 4, 3, 0), (1, 4, 3, 0), (4, 5, 2, -1), (3, 5, 2, -1), (2, 5, 2, 0)],
)
def test_birads_proxy_thresholds(birads, mal_min, ben_max, expected) -> None:
    assert birads_proxy(birads, mal_min, ben_max) == expected


def test_vindr_good_study(tmp_path: Path) -> None:
    rows = vindr_rows("s1")
    rows[2]["breast_birads"] = rows[3]["breast_birads"] = "BI-RADS 2"  # right breast benign
    findings = [
        finding(rows[0], (10.5, 12, 20, 22.25)),
        finding(rows[0], (30, 5, 40, 15), "['Suspicious Calcification', 'Mass']", "BI-RADS 5"),
        no_finding(rows[1]),
        no_finding(rows[2]),
        no_finding(rows[3]),
    ]
    result = read_dataset(_vindr_cfg(write_vindr(tmp_path, rows, findings)))
    assert result.rejects == []
    assert result.label_source == "birads_proxy"
    by_id = {r.breast_id: r for r in result.records}
    assert sorted(by_id) == ["s1_L", "s1_R"]
    left = by_id["s1_L"]
    assert (left.laterality, left.split, left.birads, left.density, left.label_malignant) == ("L", "train", 4, "B", 1)
    assert left.views["cc"].boxes == [[10.5, 12.0, 20.0, 22.25], [30.0, 5.0, 40.0, 15.0]]
    assert left.views["cc"].box_labels == ["Mass", "Suspicious Calcification, Mass"]
    assert left.views["cc"].finding_birads == [4, 5]
    assert left.views["mlo"].boxes == []
    assert left.views["cc"].path == str(tmp_path / "images" / "s1" / "s1-LCC.dicom")
    assert left.views["cc"].source == "breast-level_annotations.csv:2"
    assert by_id["s1_R"].label_malignant == 0
    # The raw ids are known so they can be scrubbed from any message.
    assert {"s1", "s1-sL", "s1-LCC", "s1-LMLO"} <= set(left.raw_identifiers())


def test_vindr_bad_inputs_become_named_rejects(tmp_path: Path) -> None:
    s1 = vindr_rows("s1", lateralities="L")
    s2 = vindr_rows("s2", lateralities="L", split="test")
    s2[1]["view_position"] = "ML"  # unknown view → bad_view, then the breast lacks MLO → missing_view
    s3 = vindr_rows("s3", lateralities="L")
    s3[0]["laterality"] = "X"  # → bad_laterality (+ missing_view for the remaining MLO)
    s4 = vindr_rows("s4", lateralities="L")
    s5 = vindr_rows("s5", lateralities="L", birads="BI-RADS X")  # → bad_label
    s6 = vindr_rows("s6", lateralities="L", split="validation")  # → bad_split
    s7 = vindr_rows("s7", lateralities="L")  # a CC file is missing → missing_file
    s8 = vindr_rows("s8", lateralities="L")
    s8[1]["breast_birads"] = "BI-RADS 5"  # CC says 4, MLO says 5 → inconsistent_breast_labels
    s9 = vindr_rows("s9", lateralities="L")
    s9_dup_view = {**s9[0], "image_id": "s9-LCC2"}  # a second CC → duplicate_view (first kept)
    dup_id = dict(s1[0])  # the same image_id listed twice → duplicate_id
    rows = s1 + [dup_id] + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + [s9_dup_view]
    findings = [no_finding(r) for r in s1 + s2 + s3 + s5 + s6 + s7 + s8 + s9]
    findings.append(finding(s4[0], (20, 10, 10, 20)))  # x2 < x1 → inverted_box
    findings.append(finding({**s1[0], "image_id": "ghost"}, (1, 1, 2, 2)))  # unknown image → orphan_finding
    findings.append(finding(s1[0], ("a", 1, 2, 2)))  # not a number → bad_box
    root = write_vindr(tmp_path, rows, findings)
    (root / "images" / "s7" / "s7-LCC.dicom").unlink()

    result = read_dataset(_vindr_cfg(root))
    reasons = Counter(r.reason for r in result.rejects)
    assert reasons == Counter(
        {
            "duplicate_id": 1,
            "bad_view": 1,
            "bad_laterality": 1,
            "missing_view": 2,
            "inverted_box": 1,
            "bad_label": 1,
            "bad_split": 1,
            "missing_file": 1,
            "inconsistent_breast_labels": 1,
            "duplicate_view": 1,
            "orphan_finding": 1,
            "bad_box": 1,
        }
    )
    assert sorted(r.breast_id for r in result.records) == ["s9_L"]
    # Every reject names the CSV file and line it came from.
    dup = next(r for r in result.rejects if r.reason == "duplicate_id")
    assert dup.source == "breast-level_annotations.csv:4"
    assert "breast-level_annotations.csv:2" in dup.detail
    orphan = next(r for r in result.rejects if r.reason == "orphan_finding")
    assert orphan.source.startswith("finding_annotations.csv:")
    assert all(":" in r.source for r in result.rejects)


def test_vindr_missing_view_duplicate_policy(tmp_path: Path) -> None:
    rows = vindr_rows("s1", lateralities="L")[:1]  # only the CC
    root = write_vindr(tmp_path, rows, [no_finding(r) for r in rows])
    assert [r.reason for r in read_dataset(_vindr_cfg(root)).rejects] == ["missing_view"]
    result = read_dataset(_vindr_cfg(root, missing_view="duplicate"))
    (record,) = result.records
    assert record.views["mlo"].path == record.views["cc"].path
    assert record.extra["duplicated_view"] == "mlo"


def test_vindr_missing_column_is_fatal_and_named(tmp_path: Path) -> None:
    rows = vindr_rows("s1", lateralities="L")
    write_vindr(tmp_path, rows, [no_finding(r) for r in rows], images=False)
    columns = [c for c in rows[0] if c != "view_position"]
    write_csv(tmp_path / "breast-level_annotations.csv", columns, rows)
    with pytest.raises(AdapterError, match=r"breast-level_annotations.csv: missing column\(s\) \['view_position'\]"):
        read_dataset(_vindr_cfg(tmp_path))


def test_vindr_missing_csv_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="breast-level_annotations.csv: file not found"):
        read_dataset(_vindr_cfg(tmp_path))


# ------------------------------------------------------------------------------------------------ RSNA


def _rsna_row(patient: str, image: str, lat: str, view: str, cancer: str = "0", **kw) -> dict:
    return {
        "site_id": "1",
        "patient_id": patient,
        "image_id": image,
        "laterality": lat,
        "view": view,
        "age": "61",
        "cancer": cancer,
        "biopsy": cancer,
        "invasive": "0",
        "BIRADS": kw.get("BIRADS", ""),
        "implant": "0",
        "density": kw.get("density", ""),
        "machine_id": "49",
        "difficult_negative_case": "False",
    }


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_rsna_breasts_labels_and_extra_views(tmp_path: Path) -> None:
    rows = [
        _rsna_row("10006", "462822612", "L", "CC", density="B", BIRADS="2"),
        _rsna_row("10006", "1459541791", "L", "MLO"),
        _rsna_row("10006", "1864590858", "R", "MLO", cancer="1"),
        _rsna_row("10006", "1874946579", "R", "CC", cancer="1"),
        _rsna_row("10006", "999", "R", "CC", cancer="1"),  # a second CC: kept first by image_id → this one
        _rsna_row("10006", "77", "R", "AT", cancer="1"),  # other projection: unused
        _rsna_row("10011", "220375232", "L", "CC", cancer="2"),  # bad label
        _rsna_row("10011", "270344397", "L", "MLO"),
    ]
    write_csv(tmp_path / "train.csv", list(rows[0]), rows)
    for row in rows:
        _touch(tmp_path / "train_images" / row["patient_id"] / f"{row['image_id']}.dcm")
    result = read_dataset(ShardsConfig(dataset="rsna", input=str(tmp_path)))
    by_id = {r.breast_id: r for r in result.records}
    assert sorted(by_id) == ["10006_L", "10006_R"]
    left, right = by_id["10006_L"], by_id["10006_R"]
    assert (left.label_malignant, left.label_source, left.density, left.birads, left.split) == (
        0,
        "pathology",
        "B",
        2,
        "",
    )
    assert right.label_malignant == 1
    assert Path(right.views["cc"].path).name == "999.dcm"  # lowest image_id among the two CCs
    assert Counter(r.reason for r in result.rejects) == Counter({"other_view": 1, "duplicate_view": 1, "bad_label": 1})
    assert not any(r.counts for r in result.rejects if r.reason in ("other_view", "duplicate_view"))


# ------------------------------------------------------------------------------------------------ CBIS-DDSM


def test_cbis_mass_and_calc_columns_merge_per_breast(tmp_path: Path) -> None:
    from mmclip_devtools.fixtures.datasets import CBIS_CALC_COLUMNS, CBIS_MASS_COLUMNS

    def row(kind: str, patient: str, lat: str, view: str, abn: int, pathology: str, density_col: str) -> dict:
        folder = f"{kind}-Training_P_{patient}_{lat}_{view}"
        return {
            "patient_id": f"P_{patient}",
            density_col: "3",
            "left or right breast": lat,
            "image view": view,
            "abnormality id": abn,
            "abnormality type": kind.lower(),
            "assessment": "4",
            "pathology": pathology,
            "subtlety": "3",
            "image file path": f"{folder}/1.2.3/1.2.4/000000.dcm",
            "cropped image file path": f"{folder}_{abn}/1.2.5/1.2.6/000000.dcm",
            "ROI mask file path": f"{folder}_{abn}/1.2.5/1.2.6/000001.dcm",
        }

    mass = [
        row("Mass", "00001", "LEFT", "CC", 1, "MALIGNANT", "breast_density"),
        row("Mass", "00001", "LEFT", "MLO", 1, "MALIGNANT", "breast_density"),
        row("Mass", "00001", "LEFT", "CC", 2, "BENIGN", "breast_density"),
    ]
    calc = [
        row("Calc", "00002", "RIGHT", "CC", 1, "BENIGN_WITHOUT_CALLBACK", "breast density"),
        row("Calc", "00002", "RIGHT", "MLO", 1, "BENIGN", "breast density"),
        row("Calc", "00003", "RIGHT", "CC", 1, "MAYBE", "breast density"),
    ]
    write_csv(tmp_path / "mass_case_description_train_set.csv", CBIS_MASS_COLUMNS, mass)
    write_csv(tmp_path / "calc_case_description_train_set.csv", CBIS_CALC_COLUMNS, calc)
    for r in mass + calc:
        for key in ("image file path", "cropped image file path", "ROI mask file path"):
            _touch(tmp_path / r[key])
    result = read_dataset(ShardsConfig(dataset="cbis", input=str(tmp_path)))
    by_id = {r.breast_id: r for r in result.records}
    assert sorted(by_id) == ["train/P_00001_L", "train/P_00002_R"]
    p1 = by_id["train/P_00001_L"]
    assert (p1.label_malignant, p1.label_source, p1.density, p1.birads) == (1, "pathology", "C", 4)
    assert p1.views["cc"].box_labels == ["Mass", "Mass"]  # two abnormalities on one image
    assert len(p1.views["cc"].mask_candidates) == 2
    # Both files of the abnormality folder are candidates, whatever the CSV says is crop or mask.
    assert [Path(p).name for p in p1.views["cc"].mask_candidates[0]] == ["000000.dcm", "000001.dcm"]
    assert by_id["train/P_00002_R"].label_malignant == 0
    assert by_id["train/P_00002_R"].views["mlo"].box_labels == ["Calcification"]
    assert [r.reason for r in result.rejects] == ["bad_label"]


def test_cbis_without_csvs_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="CBIS-DDSM case CSVs"):
        read_dataset(ShardsConfig(dataset="cbis", input=str(tmp_path)))


# ------------------------------------------------------------------------------------------------ generic


GENERIC_COLUMNS = [
    "patient_id",
    "image_path",
    "laterality",
    "view",
    "label",
    "split",
    "density",
    "boxes",
    "box_labels",
    "mask_path",
    "report",
]


def test_generic_csv(tmp_path: Path) -> None:
    rows = [
        {
            "patient_id": "p1",
            "image_path": "img/p1_lcc.dcm",
            "laterality": "LEFT",
            "view": "cc",
            "label": "malignant",
            "split": "train",
            "density": "c",
            "boxes": "[[1, 2, 10, 12]]",
            "box_labels": '["Mass"]',
            "mask_path": "img/p1_lcc_mask.png",
            "report": "Projection Position: LCC\nFree text.",
        },
        {
            "patient_id": "p1",
            "image_path": "img/p1_lmlo.dcm",
            "laterality": "L",
            "view": "MLO",
            "label": "1",
            "split": "train",
        },
        {"patient_id": "p2", "image_path": "img/p2_rcc.dcm", "laterality": "R", "view": "CC", "label": "yes"},
        {
            "patient_id": "p2",
            "image_path": "img/p2_rmlo.dcm",
            "laterality": "R",
            "view": "MLO",
            "label": "0",
            "boxes": "[[5, 5, 1, 9]]",
        },
        {
            "patient_id": "p3",
            "image_path": "img/p3_rcc.dcm",
            "laterality": "R",
            "view": "CC",
            "label": "0",
            "boxes": "[[1, 1, 2, 2]]",
            "box_labels": '["a", "b"]',
        },
        {
            "patient_id": "p4",
            "image_path": "img/p4_rcc.dcm",
            "laterality": "R",
            "view": "CC",
            "label": "0",
            "boxes": "[[5, 5, 1, 9]]",
        },
        {"patient_id": "p5", "image_path": "img/p5_rcc.dcm", "laterality": "R", "view": "CC", "label": "0"},
    ]
    csv_path = write_csv(tmp_path / "set.csv", GENERIC_COLUMNS, rows)
    for row in rows:
        _touch(tmp_path / row["image_path"])
    result = read_dataset(ShardsConfig(dataset="generic", input=str(csv_path)))
    (record,) = result.records
    assert (record.breast_id, record.label_malignant, record.density, record.split) == ("p1_L", 1, "C", "train")
    cc = record.views["cc"]
    assert cc.boxes == [[1.0, 2.0, 10.0, 12.0]] and cc.box_labels == ["Mass"]
    assert cc.mask_path == str(tmp_path / "img/p1_lcc_mask.png")
    assert cc.report == "Projection Position: LCC\nFree text."
    assert record.views["mlo"].report is None
    # One reject per breast: p2's MLO (inverted box) is absorbed by the reject of its CC (bad label).
    assert Counter(r.reason for r in result.rejects) == Counter(
        {"bad_label": 1, "bad_box": 1, "inverted_box": 1, "missing_view": 1}
    )


def test_generic_missing_column(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "set.csv", ["patient_id", "image_path", "laterality", "view"], [])
    with pytest.raises(AdapterError, match=r"set.csv: missing column\(s\) \['label'\]"):
        read_dataset(ShardsConfig(dataset="generic", input=str(csv_path)))


# ------------------------------------------------------------------------- numbers as real exports write them


def test_parse_number_forms() -> None:
    from mmclip_dist.data.build.adapters import BadValue, parse_id, parse_number

    for text in ("1", "1.0", " 1 ", "1.000", "+1"):
        assert parse_number({"c": text}, "c") == 1
    for text in ("", "nan", "NaN", " NA ", "null"):
        assert parse_number({"c": text}, "c") is None
    assert parse_number({"c": "61.5"}, "c", integer=False) == 61.5
    for text, kw in (("1.5", {}), ("x", {}), ("7", {"low": 0, "high": 6}), ("", {"required": True}), ("inf", {})):
        with pytest.raises(BadValue) as err:
            parse_number({"c": text}, "c", **kw)
        assert str(err.value).startswith(f"c {text!r} is not ")
    assert (parse_id("462822612.0"), parse_id("00123"), parse_id("a.0"), parse_id("12.5")) == (
        "462822612",
        "00123",
        "a.0",
        "12.5",
    )


def _forms(value: str) -> list[str]:
    """The spellings of one number seen in real CSV exports."""
    return [value, f"{value}.0", f" {value} "]


def _check_forms(read, column: str, value: str, expected, required: bool, tmp_path: Path) -> None:
    """Every spelling of ``value`` in ``column`` gives ``expected``; empty / nan give None (or, when required, a
    reject naming only that column and value); a non-number is a reject naming only that column and value."""
    for i, text in enumerate(_forms(value)):
        result, got = read(tmp_path / f"ok{i}", column, text)
        assert [r for r in result.rejects if r.counts] == [], (column, text, result.rejects)
        assert got == expected, (column, text, got)
    for i, text in enumerate(["", "nan"] + ["abc"]):
        result, got = read(tmp_path / f"missing{i}", column, text)
        if required or text == "abc":
            (bad,) = [r for r in result.rejects if r.counts]
            assert bad.detail.startswith(f"{column} {text!r} is not"), bad.detail
            # Only the offending value is named: no other column of the row.
            assert bad.detail.count("'") == 2 and ".csv:" in bad.source
        else:
            assert [r for r in result.rejects if r.counts] == [], (column, text, result.rejects)
            assert got is None or expected == "parsed", (column, text, got)  # "parsed": the column is only checked


def _read_rsna(root: Path, column: str, text: str):
    rows = [
        _rsna_row("10006", "462822612", "L", "CC", cancer="1", BIRADS="2"),
        _rsna_row("10006", "1459541791", "L", "MLO", cancer="1", BIRADS="2"),
    ]
    for row in rows:
        row[column] = text
    write_csv(root / "train.csv", list(rows[0]), rows)
    for row in rows:
        _touch(root / "train_images" / row["patient_id"].split(".")[0] / f"{row['image_id'].split('.')[0]}.dcm")
    result = read_dataset(ShardsConfig(dataset="rsna", input=str(root)))
    record = result.records[0] if result.records else None
    got = {"cancer": lambda r: r.label_malignant, "BIRADS": lambda r: r.birads}.get(column, lambda r: "parsed")
    return result, (got(record) if record else None)


@pytest.mark.parametrize(
    ("column", "value", "expected", "required"),
    [
        ("cancer", "1", 1, True),
        ("BIRADS", "2", 2, False),
        ("age", "61", "parsed", False),
        ("biopsy", "1", "parsed", False),
        ("invasive", "0", "parsed", False),
        ("implant", "0", "parsed", False),
        ("site_id", "2", "parsed", False),
        ("machine_id", "49", "parsed", False),
    ],
)
def test_rsna_numeric_columns_in_every_export_form(tmp_path: Path, column, value, expected, required) -> None:
    _check_forms(_read_rsna, column, value, expected, required, tmp_path)


def test_rsna_float_ids_name_the_same_files(tmp_path: Path) -> None:
    rows = [_rsna_row("10006.0", "462822612.0", "L", "CC"), _rsna_row("10006", "1459541791", "L", "MLO")]
    write_csv(tmp_path / "train.csv", list(rows[0]), rows)
    for image in ("462822612", "1459541791"):
        _touch(tmp_path / "train_images" / "10006" / f"{image}.dcm")
    (record,) = read_dataset(ShardsConfig(dataset="rsna", input=str(tmp_path))).records
    assert record.breast_id == "10006_L" and Path(record.views["cc"].path).name == "462822612.dcm"


def test_rsna_reject_names_only_the_bad_value(tmp_path: Path) -> None:
    rows = [_rsna_row("1", "11", "L", "CC", cancer="1", BIRADS="9"), _rsna_row("1", "12", "L", "MLO", cancer="1")]
    write_csv(tmp_path / "train.csv", list(rows[0]), rows)
    (reject,) = read_dataset(ShardsConfig(dataset="rsna", input=str(tmp_path))).rejects
    assert (reject.reason, reject.detail) == ("bad_label", "BIRADS '9' is not an integer in 0..6")
    # A breast-level reject lists every row of the breast.
    assert reject.source == "train.csv:2,train.csv:3"


def _read_vindr(root: Path, column: str, text: str):
    rows = vindr_rows("s1", lateralities="L")
    findings = [finding(rows[0], (10, 12, 20, 22)), no_finding(rows[1])]
    if column in ("height", "width", "breast_birads"):
        for row in rows:
            row[column] = text
        findings = [{**f, column: text} for f in findings]
    else:
        findings[0][column] = text
    root.mkdir(parents=True)
    write_vindr(root, vindr_rows("s1", lateralities="L"), [], images=True)  # DICOMs at the normal size
    write_vindr(root, rows, findings, images=False)
    result = read_dataset(_vindr_cfg(root))
    record = result.records[0] if result.records else None
    got = {
        "breast_birads": lambda r: r.birads,
        "finding_birads": lambda r: r.views["cc"].finding_birads[0],
        "height": lambda r: "parsed",
        "width": lambda r: "parsed",
    }.get(column, lambda r: r.views["cc"].boxes[0])
    return result, (got(record) if record else None)


@pytest.mark.parametrize(
    ("column", "value", "expected", "required"),
    [
        ("breast_birads", "4", 4, True),
        ("finding_birads", "5", 5, False),
        ("height", "64", "parsed", False),
        ("width", "48", "parsed", False),
        ("xmin", "10", [10.0, 12.0, 20.0, 22.0], True),
        ("ymin", "12", [10.0, 12.0, 20.0, 22.0], True),
        ("xmax", "20", [10.0, 12.0, 20.0, 22.0], True),
        ("ymax", "22", [10.0, 12.0, 20.0, 22.0], True),
    ],
)
def test_vindr_numeric_columns_in_every_export_form(tmp_path: Path, column, value, expected, required) -> None:
    _check_forms(_read_vindr, column, value, expected, required, tmp_path)


def _cbis_row(folder: str, **kw) -> dict:
    return {
        "patient_id": "P_00001",
        "breast_density": "3",
        "left or right breast": "LEFT",
        "image view": "CC",
        "abnormality id": "1",
        "abnormality type": "mass",
        "assessment": "4",
        "pathology": "MALIGNANT",
        "subtlety": "3",
        "image file path": f"{folder}/1.2.3/1.2.4/000000.dcm",
        "cropped image file path": f"{folder}_1/1.2.5/1.2.6/000000.dcm",
        "ROI mask file path": f"{folder}_1/1.2.5/1.2.6/000001.dcm",
        **kw,
    }


def _write_cbis(root: Path, rows: list[dict]) -> Path:
    from mmclip_devtools.fixtures.datasets import CBIS_MASS_COLUMNS

    write_csv(root / "mass_case_description_train_set.csv", CBIS_MASS_COLUMNS, rows)
    for r in rows:
        for key in ("image file path", "cropped image file path", "ROI mask file path"):
            _touch(root / r[key])
    return root


def _read_cbis(root: Path, column: str, text: str):
    rows = [
        _cbis_row("Mass-Training_P_00001_LEFT_CC", **{column: text}),
        _cbis_row("Mass-Training_P_00001_LEFT_MLO", **{"image view": "MLO", column: text}),
    ]
    result = read_dataset(ShardsConfig(dataset="cbis", input=str(_write_cbis(root, rows))))
    record = result.records[0] if result.records else None
    got = {"breast_density": lambda r: r.density, "assessment": lambda r: r.birads}.get(column, lambda r: "parsed")
    return result, (got(record) if record else None)


@pytest.mark.parametrize(
    ("column", "value", "expected", "required"),
    [
        ("breast_density", "3", "C", True),
        ("assessment", "4", 4, False),
        ("abnormality id", "1", "parsed", True),
        ("subtlety", "3", "parsed", False),
    ],
)
def test_cbis_numeric_columns_in_every_export_form(tmp_path: Path, column, value, expected, required) -> None:
    _check_forms(_read_cbis, column, value, expected, required, tmp_path)


def test_cbis_duplicate_row_is_rejected_not_a_second_box(tmp_path: Path) -> None:
    rows = [
        _cbis_row("Mass-Training_P_00001_LEFT_CC"),
        _cbis_row("Mass-Training_P_00001_LEFT_MLO", **{"image view": "MLO"}),
    ]
    rows.insert(1, dict(rows[0]))
    result = read_dataset(ShardsConfig(dataset="cbis", input=str(_write_cbis(tmp_path, rows))))
    (record,) = result.records
    assert len(record.views["cc"].mask_candidates) == 1 and record.views["cc"].box_labels == ["Mass"]
    (reject,) = result.rejects
    assert (reject.source, reject.reason) == ("mass_case_description_train_set.csv:3", "duplicate_id")
    assert "mass_case_description_train_set.csv:2" in reject.detail


def _read_generic(root: Path, column: str, text: str):
    rows = [
        {
            "patient_id": "p1",
            "image_path": "img/p1_lcc.dcm",
            "laterality": "L",
            "view": "CC",
            "label": "1",
            "birads": "4",
            "boxes": "[[1, 2, 10, 12]]",
        },
        {
            "patient_id": "p1",
            "image_path": "img/p1_lmlo.dcm",
            "laterality": "L",
            "view": "MLO",
            "label": "1",
            "birads": "4",
        },
    ]
    if column == "boxes":
        rows[0]["boxes"] = f"[[{json.dumps(text)}, 2, 10, 12]]"  # numbers written as JSON strings
    else:
        for row in rows:
            row[column] = text
    csv_path = write_csv(root / "set.csv", GENERIC_COLUMNS + ["birads"], rows)
    for row in rows:
        _touch(root / row["image_path"])
    result = read_dataset(ShardsConfig(dataset="generic", input=str(csv_path)))
    record = result.records[0] if result.records else None
    got = {
        "label": lambda r: r.label_malignant,
        "birads": lambda r: r.birads,
        "boxes": lambda r: r.views["cc"].boxes[0][0],
    }[column]
    return result, (got(record) if record else None)


@pytest.mark.parametrize(
    ("column", "value", "expected", "required"),
    [("label", "1", 1, True), ("birads", "4", 4, False), ("boxes", "1", 1.0, True)],
)
def test_generic_numeric_columns_in_every_export_form(tmp_path: Path, column, value, expected, required) -> None:
    _check_forms(_read_generic, column, value, expected, required, tmp_path)
