"""End-to-end shard builds: synthetic VinDr → shards that follow the schema, determinism, bad inputs, CLI."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from mmclip_devtools.fixtures.datasets import finding, no_finding, vindr_rows, write_image, write_vindr
from mmclip_dist.cli.main import main as cli_main
from mmclip_dist.config import REDACTED, ShardsConfig, SyntheticConfig
from mmclip_dist.data.build.builder import assign_split, build_shards
from mmclip_dist.data.build.deid import SaltError
from mmclip_dist.data.build.shard_writer import ShardSink, verify_output
from mmclip_dist.data.codecs import decode_pixels
from mmclip_dist.data.synthetic import generate_vindr_dataset, load_truth

SIZE = (96, 64)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_vindr_dataset(root, SyntheticConfig(num_patients=5, height=160, width=120, test_fraction=0.4))
    return root


def read_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} over every shard of a local output."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _cfg(root: Path, out: Path, **kw) -> ShardsConfig:
    return ShardsConfig(input=str(root), output=str(out), image_size=SIZE, **kw)


def test_synthetic_build_follows_the_schema(synthetic_root: Path, tmp_path: Path) -> None:
    result = build_shards(_cfg(synthetic_root, tmp_path, shard_max_samples=3, processes=1), progress=False)
    assert result.rejects == []
    assert result.samples == 10  # 5 patients x 2 breasts
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["label_source"] == "birads_proxy"
    assert manifest["splits"]["test"]["samples"] == 4 and manifest["splits"]["train"]["samples"] == 6
    assert manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar"]
    assert manifest["config"]["salt"] == ""
    samples = read_samples(tmp_path)
    assert len(samples) == 10
    labels = Counter()
    for key, files in samples.items():
        assert sorted(files) == ["cc.u16.zst", "json", "mlo.u16.zst"]
        meta = json.loads(files["json"])
        assert meta["breast_id"] == key and len(key) == 32 and "." not in key
        assert set(meta) == {
            "schema",
            "dataset",
            "breast_id",
            "patient_id",
            "laterality",
            "split",
            "label",
            "density",
            "birads",
            "views",
        }
        assert meta["schema"] == 2
        assert meta["label"]["source"] == "birads_proxy"
        assert meta["label"]["malignant"] == (1 if meta["birads"] >= 4 else 0)
        labels[meta["label"]["malignant"]] += 1
        for view in ("cc", "mlo"):
            pixels = decode_pixels(files[f"{view}.u16.zst"])
            assert pixels.dtype == np.uint16 and pixels.shape == SIZE
            assert pixels.max() > 255  # really 16-bit content, not 8 bits in a 16-bit container
            v = meta["views"][view]
            assert (
                len(v["boxes"]) == len(v["box_labels"]) == len(v["box_flags"]) >= 1
            )  # every synthetic breast has a lesion
            for x1, y1, x2, y2 in v["boxes"]:
                assert 0 <= x1 < x2 <= SIZE[1] and 0 <= y1 < y2 <= SIZE[0]
            assert v["report"].startswith(f"Projection Position: {meta['laterality']}{view.upper()}\n")
            assert "(BI-RADS proxy, not biopsy-proven)" in v["report"]
            assert v["transform"]["out_size"] == list(SIZE)
    # Label counts in the manifest are what the shards hold.
    totals = Counter()
    for info in manifest["splits"].values():
        totals.update(info["labels"])
    assert totals == Counter({"malignant": labels[1], "benign": labels[0], "unknown": 0})
    truth = load_truth(synthetic_root)
    assert len(truth) == 10


def test_build_is_deterministic_across_process_counts(synthetic_root: Path, tmp_path: Path) -> None:
    one = build_shards(_cfg(synthetic_root, tmp_path / "one", processes=1, shard_max_samples=4), progress=False)
    two = build_shards(
        _cfg(synthetic_root, tmp_path / "two", processes=2, shard_max_samples=4, resume=False), progress=False
    )
    assert [s.sha256 for s in one.shards] == [s.sha256 for s in two.shards]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    for name in names:
        if name != "manifest.json":  # the manifest records the config, which differs in processes/resume
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert verify_output(ShardSink(str(tmp_path / "two"))) == []


def test_salt_changes_keys_and_real_data_needs_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = vindr_rows("s1", lateralities="L")
    root = write_vindr(tmp_path / "in", rows, [no_finding(r) for r in rows])
    monkeypatch.delenv("MMCLIP_ID_SALT", raising=False)
    with pytest.raises(SaltError, match="MMCLIP_ID_SALT"):
        build_shards(_cfg(root, tmp_path / "out"), progress=False)
    a = build_shards(_cfg(root, tmp_path / "a", salt="salt-one-0123456789", processes=1), progress=False)
    monkeypatch.setenv("MMCLIP_ID_SALT", "salt-two-0123456789")
    build_shards(_cfg(root, tmp_path / "b", processes=1), progress=False)
    assert set(read_samples(tmp_path / "a")).isdisjoint(read_samples(tmp_path / "b"))
    assert a.manifest["config"]["salt"] == REDACTED
    monkeypatch.setenv("MMCLIP_ID_SALT", "two")
    with pytest.raises(SaltError, match="MMCLIP_ID_SALT is 3 characters; an id salt must be at least 16"):
        build_shards(_cfg(root, tmp_path / "c", processes=1), progress=False)


def test_assign_split_is_a_stable_fraction() -> None:
    assert assign_split("00000000" + "0" * 24, 0.1) == "test"
    assert assign_split("ffffffff" + "0" * 24, 0.9) == "train"
    assert assign_split("80000000" + "0" * 24, 0.5) == "train"  # exactly one half is not below 0.5
    assert assign_split("7fffffff" + "0" * 24, 0.5) == "test"
    assert assign_split("00000000" + "0" * 24, 0.0) == "train"


def _bad_dataset(root: Path) -> Path:
    """One good breast plus one breast per kind of bad input (decode-time and CSV-time)."""
    studies = {
        name: vindr_rows(name, lateralities="L")
        for name in (
            "good",
            "trunc",
            "notdicom",
            "nopixels",
            "syntax",
            "dir",
            "outside",
            "latmix",
            "orient",
            "viewless",
            "badlat",
            "badlabel",
            "inverted",
        )
    }
    studies["viewless"] = studies["viewless"][:1]  # only a CC → missing_view
    studies["badlat"][0]["laterality"] = "Q"  # → bad_laterality (+ missing_view)
    studies["badlabel"][0]["breast_birads"] = studies["badlabel"][1]["breast_birads"] = "BI-RADS ?"
    rows = [r for rs in studies.values() for r in rs]
    findings = [no_finding(r) for name, rs in studies.items() for r in rs if name not in ("outside", "inverted")]
    findings += [finding(studies["outside"][0], (500, 500, 600, 600)), no_finding(studies["outside"][1])]
    findings += [finding(studies["inverted"][0], (30, 5, 10, 20)), no_finding(studies["inverted"][1])]
    write_vindr(root, rows, findings)
    images = root / "images"
    cc = {name: images / name / f"{name}-LCC.dicom" for name in studies}
    data = cc["trunc"].read_bytes()
    cc["trunc"].write_bytes(data[: len(data) - 2000])
    cc["notdicom"].write_bytes(b"this is a JPEG, honest\n" * 20)
    ds = pydicom.dcmread(cc["nopixels"])
    del ds.PixelData
    ds.save_as(cc["nopixels"])
    # Same-length edit of the meta header: Explicit VR LE (…1.2.1) becomes an undefined syntax (…1.2.7).
    data = cc["syntax"].read_bytes()
    cc["syntax"].write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.7\x00", 1))
    cc["dir"].unlink()
    cc["dir"].mkdir()  # a path that exists but cannot be read as a file
    write_image(cc["latmix"], laterality="R", view="CC")  # DICOM says R, the CSV says L
    return root


EXPECTED_BAD = {
    "truncated": 1,
    "not_dicom": 1,
    "no_pixel_data": 1,
    "unsupported_transfer_syntax": 1,
    "unreadable": 1,
    "box_outside_image": 1,
    "laterality_mismatch": 1,
    "missing_view": 2,
    "bad_laterality": 1,
    "bad_label": 1,
    "inverted_box": 1,
}


def test_bad_inputs_are_named_rejects_and_the_cli_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _bad_dataset(tmp_path / "in")
    out = tmp_path / "out"
    args = [
        "shards",
        "build",
        "--no-progress",
        f"shards.input={root}",
        f"shards.output={out}",
        "shards.salt=test-salt-0123456789",
        "shards.processes=2",
        f"shards.image_size=[{SIZE[0]}, {SIZE[1]}]",
    ]
    assert cli_main(args) == 1  # 12 of 14 inputs rejected, far above the 5% default
    printed = capsys.readouterr()
    assert "more than shards.max_reject_fraction" in printed.err
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejects) == Counter(EXPECTED_BAD)
    for reason in EXPECTED_BAD:
        assert reason in printed.out
    assert all(r["source"].startswith(("breast-level_annotations.csv:", "finding_annotations.csv:")) for r in rejects)
    samples = read_samples(out)
    assert len(samples) == 2  # "good" and "orient" (whose DICOM has no laterality issue)
    # With a tolerant limit the same build succeeds (and resumes: nothing is rebuilt).
    assert cli_main(args + ["shards.max_reject_fraction=0.9"]) == 0


def test_verify_cli(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build_shards(_cfg(synthetic_root, tmp_path, processes=1), progress=False)
    assert cli_main(["shards", "verify", "--output", str(tmp_path)]) == 0
    shard = tmp_path / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 1
    shard.write_bytes(bytes(data))
    assert cli_main(["shards", "verify", "--output", str(tmp_path)]) == 1
    assert "train-000000.tar: sha256" in capsys.readouterr().err


def _mask_bbox(payload: bytes) -> list[int]:
    mask = decode_pixels(payload) > 0
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_cbis_masks_matched_by_size_and_boxes_from_masks(tmp_path: Path) -> None:
    from mmclip_devtools.fixtures.datasets import CBIS_MASS_COLUMNS, write_csv
    from mmclip_devtools.fixtures.dicoms import write_dicom

    rows = []
    for view, mask_shape in (("CC", (64, 48)), ("MLO", (128, 96))):  # the MLO mask is the image at twice the size
        folder = f"Mass-Training_P_00001_LEFT_{view}"
        image = write_image(tmp_path / folder / "1.1" / "1.2" / "000000.dcm", "L", view)
        assert image.exists()
        mask = np.zeros(mask_shape, dtype=np.uint16)
        k = mask_shape[0] // 64
        mask[20 * k : 30 * k, 8 * k : 20 * k] = 255
        roi = tmp_path / f"{folder}_1" / "1.3" / "1.4"
        roi.mkdir(parents=True)
        # The CSV swaps crop and mask (as happens in CBIS-DDSM): size decides, not the listed name.
        write_dicom(roi / "000000.dcm", mask, bits_stored=8, laterality="L", view=view)
        write_dicom(roi / "000001.dcm", np.full((10, 12), 900, dtype=np.uint16), laterality="L", view=view)
        rows.append(
            {
                "patient_id": "P_00001",
                "breast_density": "2",
                "left or right breast": "LEFT",
                "image view": view,
                "abnormality id": 1,
                "abnormality type": "mass",
                "assessment": "5",
                "pathology": "MALIGNANT",
                "subtlety": "5",
                "image file path": f"{folder}/1.1/1.2/000000.dcm",
                "cropped image file path": f"{folder}_1/1.3/1.4/000000.dcm",
                "ROI mask file path": f"{folder}_1/1.3/1.4/000001.dcm",
            }
        )
    write_csv(tmp_path / "mass_case_description_train_set.csv", CBIS_MASS_COLUMNS, rows)
    out = tmp_path / "out"
    result = build_shards(
        ShardsConfig(
            dataset="cbis",
            input=str(tmp_path),
            output=str(out),
            image_size=SIZE,
            salt="test-salt-0123456789",
            processes=1,
        ),
        progress=False,
    )
    assert result.rejects == [] and result.manifest["label_source"] == "pathology"
    (files,) = read_samples(out).values()
    assert sorted(files) == ["cc.u16.zst", "cc_mask.u8.zst", "json", "mlo.u16.zst", "mlo_mask.u8.zst"]
    meta = json.loads(files["json"])
    assert meta["label"] == {"malignant": 1, "source": "pathology"} and meta["density"] == "B"
    for view in ("cc", "mlo"):
        (box,) = meta["views"][view]["boxes"]
        # The box taken from the mask lands where the stored mask is (both went through one transform).
        assert np.allclose(box, _mask_bbox(files[f"{view}_mask.u8.zst"]), atol=1.0), (view, box)
        assert meta["views"][view]["box_labels"] == ["Mass"]
        assert "Pathology: malignancy." in meta["views"][view]["report"]


def test_generic_build_uses_given_reports_and_png_masks(tmp_path: Path) -> None:
    from mmclip_devtools.fixtures.datasets import write_csv

    write_image(tmp_path / "a_cc.dcm", "R", "CC")
    write_image(tmp_path / "a_mlo.dcm", "R", "MLO")
    mask = np.zeros((64, 48), dtype=np.uint8)
    mask[30:40, 30:44] = 1
    Image.fromarray(mask).save(tmp_path / "a_cc_mask.png")
    rows = [
        {
            "patient_id": "A",
            "image_path": "a_cc.dcm",
            "laterality": "R",
            "view": "CC",
            "label": "0",
            "mask_path": "a_cc_mask.png",
            "boxes": "[[30, 30, 44, 40]]",
            "box_labels": '["Mass"]',
            "report": "Given report.",
        },
        {"patient_id": "A", "image_path": "a_mlo.dcm", "laterality": "R", "view": "MLO", "label": "0"},
    ]
    csv_path = write_csv(
        tmp_path / "set.csv",
        ["patient_id", "image_path", "laterality", "view", "label", "mask_path", "boxes", "box_labels", "report"],
        rows,
    )
    out = tmp_path / "out"
    build_shards(
        ShardsConfig(
            dataset="generic",
            input=str(csv_path),
            output=str(out),
            image_size=SIZE,
            salt="test-salt-0123456789",
            processes=1,
            test_fraction=0.0,
        ),
        progress=False,
    )
    (files,) = read_samples(out).values()
    meta = json.loads(files["json"])
    assert meta["split"] == "train"
    assert meta["views"]["cc"]["report"] == "Given report."
    assert meta["views"]["mlo"]["report"].startswith("Projection Position: RMLO\n")
    assert np.allclose(meta["views"]["cc"]["boxes"][0], _mask_bbox(files["cc_mask.u8.zst"]), atol=1.0)
    assert "mlo_mask.u8.zst" not in files


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigkill_then_resume_gives_identical_output(tmp_path: Path) -> None:
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "in"
    generate_vindr_dataset(root, SyntheticConfig(num_patients=14, height=320, width=240, seed=3))
    # A bad file too, so rejects must survive the kill as well.
    victim = sorted((root / "images").rglob("*.dicom"))[5]
    victim.write_bytes(victim.read_bytes()[:-5000])
    common = [
        "shards",
        "build",
        "--no-progress",
        f"shards.input={root}",
        "shards.image_size=[190, 120]",
        "shards.shard_max_samples=2",
        "shards.processes=2",
        "shards.max_reject_fraction=0.5",
    ]
    reference = tmp_path / "reference"
    assert cli_main(common + [f"shards.output={reference}"]) == 0

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "mmclip_dist.cli.main", *common, f"shards.output={out}"]
    rng = random.Random(1234)
    target = 0
    for _ in range(2):
        target += rng.randint(1, 4)  # committed sidecars (of ~15) to wait for before the kill
        # Own session: the kill reaches the builder and its pool workers (a real crash takes all of them).
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("*-0*.json"))) >= target:
                # Land inside the next shard: well under one shard's build time (~50 ms here on an idle
                # machine), or the remaining shards can all finish before the kill arrives.
                time.sleep(rng.random() * 0.01)
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the build finished before it could be killed; make the dataset larger"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "manifest.json").exists()
    assert cli_main(common + [f"shards.output={out}"]) == 0

    ref_files = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == ref_files
    for name in ref_files:
        if name != "manifest.json":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    out_manifest = json.loads((out / "manifest.json").read_text())
    ref_manifest["config"].pop("output"), out_manifest["config"].pop("output")
    assert out_manifest == ref_manifest
    # No input lost: every breast is a sample or a reject.
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert len(read_samples(out)) + len(rejects) == 28
    assert [json.loads(r)["reason"] for r in rejects] == ["truncated"]


def test_every_input_row_is_in_exactly_one_shard_sample_or_reject(tmp_path: Path) -> None:
    from mmclip_dist.data.build.builder import prepare

    root = _bad_dataset(tmp_path / "in")
    extra = vindr_rows("dupview", lateralities="L")
    extra.append({**extra[0], "image_id": "dupview-LCC2"})  # a second CC: an unused image, its breast still kept
    lines = (root / "breast-level_annotations.csv").read_text().splitlines()
    rows_before = len(lines) - 1
    import csv as _csv

    with (root / "breast-level_annotations.csv").open("a", newline="") as fh:
        writer = _csv.DictWriter(fh, fieldnames=list(extra[0]), lineterminator="\n")
        for row in extra:
            writer.writerow(row)
    for i, row in enumerate(extra):
        write_image(root / "images" / "dupview" / f"{row['image_id']}.dicom", "L", row["view_position"], seed=i)
    cfg = _cfg(root, tmp_path / "out", processes=1, max_reject_fraction=1.0, salt="test-salt-0123456789")
    result = build_shards(cfg, progress=False)
    in_shards = set(read_samples(tmp_path / "out"))
    splits = prepare(cfg)[0]
    sample_rows = [
        part
        for items in splits.values()
        for key, record in items
        if key in in_shards
        for part in record.source.split(",")
    ]
    reject_rows = [part for r in result.rejects for part in r["source"].split(",")]
    for line in range(2, rows_before + len(extra) + 2):
        source = f"breast-level_annotations.csv:{line}"
        places = sample_rows.count(source) + reject_rows.count(source)
        assert places == 1, (source, places, [r for r in result.rejects if source in r["source"].split(",")])
    # inputs = breasts named by the CSV (14 VinDr breasts) + the row with an unreadable laterality.
    assert result.inputs == 15
    assert result.samples == 3  # good, orient, dupview


def test_cbis_mask_of_another_shape_drops_that_roi(tmp_path: Path) -> None:
    from mmclip_devtools.fixtures.datasets import CBIS_MASS_COLUMNS, write_csv
    from mmclip_devtools.fixtures.dicoms import write_dicom

    rows = []
    for view, masks in (("CC", [(64, 48), (64, 60)]), ("MLO", [(64, 48)])):  # CC's 2nd mask: another aspect ratio
        folder = f"Mass-Training_P_00001_LEFT_{view}"
        write_image(tmp_path / folder / "1.1" / "1.2" / "000000.dcm", "L", view)
        for abn, shape in enumerate(masks, start=1):
            mask = np.zeros(shape, dtype=np.uint16)
            mask[20:30, 8:20] = 255
            roi = tmp_path / f"{folder}_{abn}" / "1.3" / "1.4"
            roi.mkdir(parents=True)
            write_dicom(roi / "000000.dcm", mask, bits_stored=8, laterality="L", view=view)
            rows.append(
                {
                    "patient_id": "P_00001",
                    "breast_density": "2",
                    "left or right breast": "LEFT",
                    "image view": view,
                    "abnormality id": abn,
                    "abnormality type": "mass",
                    "assessment": "5",
                    "pathology": "MALIGNANT",
                    "subtlety": "5",
                    "image file path": f"{folder}/1.1/1.2/000000.dcm",
                    "cropped image file path": f"{folder}_{abn}/1.3/1.4/000000.dcm",
                    "ROI mask file path": f"{folder}_{abn}/1.3/1.4/000000.dcm",
                }
            )
    write_csv(tmp_path / "mass_case_description_train_set.csv", CBIS_MASS_COLUMNS, rows)
    out = tmp_path / "out"
    result = build_shards(
        ShardsConfig(
            dataset="cbis",
            input=str(tmp_path),
            output=str(out),
            image_size=SIZE,
            salt="test-salt-0123456789",
            processes=1,
        ),
        progress=False,
    )
    (reject,) = result.rejects
    assert reject["reason"] == "mask_size_mismatch"
    assert reject["detail"].startswith("CC: ROI mask #2 is 64x60 but the image is 64x48")
    assert "P_00001" not in json.dumps(reject)  # scrubbed like every reject
    (files,) = read_samples(out).values()
    meta = json.loads(files["json"])
    assert len(meta["views"]["cc"]["boxes"]) == 1 and meta["views"]["cc"]["box_labels"] == ["Mass"]
    assert result.manifest["rejects"]["by_reason"] == {"mask_size_mismatch": 1}
