"""CBIS-DDSM: mass and calcification case CSVs → one record per breast, boxes from the ROI masks.

CSVs (any of them may be absent, at least one must exist): ``mass_case_description_{train,test}_set.csv``
and ``calc_case_description_{train,test}_set.csv``; one row per abnormality. The two kinds spell the
density column differently (``breast_density`` vs ``breast density``). ``pathology`` is biopsy-proven:
MALIGNANT → 1, BENIGN / BENIGN_WITHOUT_CALLBACK → 0; a breast is malignant if any abnormality is.

Paths in the CSVs are relative to the root (``<Mass|Calc>-<Training|Test>_P_xxxxx_<LEFT|RIGHT>_<CC|MLO>/
<StudyUID>/<SeriesUID>/000000.dcm``). The ROI mask and the lesion crop share folders whose file order is
unreliable, so every ``.dcm`` in the folders of both listed paths is a mask candidate; the builder picks
the one whose size equals the image (or the largest, resized to the image grid) and takes the
abnormality's box from the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmclip_dist.data.build.adapters import (
    AdapterError,
    BadValue,
    BreastAssembler,
    check_files,
    count_inputs,
    join_sources,
    parse_laterality_view,
    parse_number,
    read_csv,
)
from mmclip_dist.data.build.records import AdapterResult, BreastRecord, Reject, ViewRecord

if TYPE_CHECKING:
    from mmclip_dist.config import ShardsConfig

CSVS = {  # file → (abnormality label, split, density column)
    "mass_case_description_train_set.csv": ("Mass", "train", "breast_density"),
    "mass_case_description_test_set.csv": ("Mass", "test", "breast_density"),
    "calc_case_description_train_set.csv": ("Calcification", "train", "breast density"),
    "calc_case_description_test_set.csv": ("Calcification", "test", "breast density"),
}
COMMON = (
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "assessment",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)
PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
DENSITY = {1: "A", 2: "B", 3: "C", 4: "D"}


def read(cfg: ShardsConfig) -> AdapterResult:
    """Read a CBIS-DDSM root folder (``cfg.input``) holding the case CSVs and the DICOM folders."""
    root = Path(cfg.input)
    present = [name for name in CSVS if (root / name).is_file()]
    if not present:
        raise AdapterError(f"{root}: none of the CBIS-DDSM case CSVs {sorted(CSVS)} found")
    rejects: list[Reject] = []
    assembler = BreastAssembler(cfg.missing_view)
    images: dict[str, ViewRecord] = {}  # image path → its view record (abnormalities of one image merge)
    abnormalities: dict[tuple[str, str, int | float | None], str] = {}  # (kind, image, abnormality id) → row
    for name in present:
        kind, split, density_column = CSVS[name]
        for source, row in read_csv(root / name, COMMON + (density_column,)):
            side = parse_laterality_view(row, source, "left or right breast", "image view", rejects)
            if side is None:
                continue
            laterality, view = side
            breast_id = f"{split}/{row['patient_id']}_{laterality}"
            label = PATHOLOGY.get(row["pathology"].upper())
            try:
                if label is None:
                    raise BadValue("pathology", row["pathology"], "MALIGNANT, BENIGN or BENIGN_WITHOUT_CALLBACK")
                density = DENSITY[int(parse_number(row, density_column, low=1, high=4, required=True))]  # type: ignore[arg-type]
                assessment = parse_number(row, "assessment", low=0, high=6)
                abnormality = parse_number(row, "abnormality id", low=0, high=1e6, required=True)
                parse_number(row, "subtlety", low=0, high=5)  # unused, but a garbled value means a garbled row
            except BadValue as err:
                assembler.reject_breast(breast_id, Reject(source, "bad_label", str(err)))
                continue
            row_key = (kind, row["image file path"], abnormality)
            if row_key in abnormalities:
                # A repeated row would give the abnormality a second box (and double its weight).
                rejects.append(
                    Reject(
                        source,
                        "duplicate_id",
                        f"{kind.lower()} abnormality id {abnormality} of this "
                        f"image already listed at {abnormalities[row_key]}",
                    )
                )
                continue
            abnormalities[row_key] = source
            paths = [row["image file path"], row["cropped image file path"], row["ROI mask file path"]]
            if not all(paths):
                assembler.reject_breast(breast_id, Reject(source, "missing_file", "an image/crop/mask path is empty"))
                continue
            image_path = str(root / paths[0])
            candidates = _candidates(root, paths[1], paths[2])
            vrec = images.get(image_path)
            if vrec is None:
                vrec = images[image_path] = ViewRecord(path=image_path, source=source)
                record = BreastRecord(
                    dataset="cbis",
                    breast_id=breast_id,
                    patient_id=row["patient_id"],
                    laterality=laterality,
                    split=split,
                    label_malignant=label,
                    label_source="pathology",
                    density=density,
                    birads=assessment,
                    views={},
                    source=source,
                    extra={"raw_ids": [row["patient_id"]]},
                )
                assembler.add_view(record, view, vrec)
            elif breast_id in assembler.bad:  # a further abnormality of a rejected breast: its row joins the reject
                assembler.reject_breast(breast_id, Reject(source, "absorbed"))
                continue
            vrec.mask_candidates.append(candidates)
            vrec.box_labels.append(kind)
            vrec.finding_birads.append(assessment)
            breast = assembler.breasts.get(breast_id)
            if breast is not None:
                # Breast-level values over all its abnormalities: malignant if any is, the highest assessment.
                breast.label_malignant = max(breast.label_malignant, label)
                if assessment is not None:
                    breast.birads = max(breast.birads or 0, assessment)
                breast.source = join_sources(breast.source, source)
    records = assembler.finish()
    rejects += assembler.rejects
    records = check_files(records, rejects)
    kept = []
    for record in records:
        maskless = [
            v for v in record.views.values() if not any(Path(p).exists() for group in v.mask_candidates for p in group)
        ]
        if maskless:
            rejects.append(
                Reject(
                    record.source,
                    "missing_file",
                    f"no ROI mask file found for the {'/'.join(v.upper() for v, r in record.views.items() if r in maskless)} image",
                )
            )
        else:
            kept.append(record)
    records = kept
    return AdapterResult(
        records=records, rejects=rejects, label_source="pathology", inputs=count_inputs(assembler, rejects)
    )


def _candidates(root: Path, crop_path: str, mask_path: str) -> list[str]:
    """Every .dcm in the folders of the listed crop and mask (the listed names may point at each other)."""
    out: list[str] = []
    for listed in (mask_path, crop_path):
        folder = (root / listed).parent
        found = sorted(str(p) for p in folder.glob("*.dcm")) if folder.is_dir() else []
        for path in found or [str(root / listed)]:
            if path not in out:
                out.append(path)
    return out
