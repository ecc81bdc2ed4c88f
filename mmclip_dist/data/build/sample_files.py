"""One ``BreastRecord`` → the files of one WebDataset sample (docs/architecture.md, docs/shards.md).

Runs inside the builder's worker processes: decode both views (``dicom.decode_dicom``), load and
match ROI masks, preprocess (``preprocess.preprocess_view``), write the report, encode the pixels
(``codecs.encode_pixels``: ``<view>.u16.zst``, masks ``<view>_mask.u8.zst``) and the whitelisted ``json``. Every failure becomes a :class:`Reject` whose text is scrubbed of raw ids
and paths, so a bad file never crashes the build and never leaks an identifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmclip_dist.data.build import deid
from mmclip_dist.data.build.dicom import DecodedImage, DicomDecodeError, decode_dicom
from mmclip_dist.data.build.preprocess import chest_wall_side, preprocess_view
from mmclip_dist.data.build.records import BreastRecord, Reject, ViewRecord
from mmclip_dist.data.build.reports import Finding, ReportRewriter, view_report
from mmclip_dist.data.codecs import encode_pixels
from mmclip_dist.data.shard_format import SCHEMA_VERSION, VIEWS, image_file, mask_file


@dataclass
class SampleSpec:
    """What every worker needs besides the record (picklable; sent once per worker)."""

    image_size: tuple[int, int]
    flip_to: str
    salt: str
    rewriter: ReportRewriter | None = None
    phi_policy: str = "reject"  # shards.phi_policy
    allow_burned_in: bool = False  # shards.allow_burned_in


@dataclass
class Sample:
    """An encoded sample: its key, files (extension → bytes, in write order) and label."""

    key: str
    files: dict[str, bytes]
    label: int
    deid: dict[str, int] = field(default_factory=dict)  # what de-identification did (summed in the manifest)
    rejects: list[Reject] = field(default_factory=list)  # parts left out (a CBIS ROI whose mask does not fit)


class _RoiMismatch(Exception):
    """An ROI mask whose size differs from its image by more than a scaling (aspect ratio off by > 1%)."""


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def breast_key(record: BreastRecord, salt: str) -> str:
    """The sample key: salted hash of the dataset + breast id."""
    return deid.hash_id(record.breast_id, salt, f"{record.dataset}/breast")


def patient_key(record: BreastRecord, salt: str) -> str:
    return deid.hash_id(record.patient_id, salt, f"{record.dataset}/patient")


def make_sample(record: BreastRecord, spec: SampleSpec) -> Sample | Reject:
    """Build the sample of one breast, or the reason it cannot be built."""
    try:
        return _make_sample(record, spec)
    except deid.PhiFound as err:  # the message names the text and the PHI types, never the text itself
        return Reject(record.source, deid.PHI_REASON, str(err))
    except _Rejected as err:
        return Reject(record.source, err.reason, deid.scrub(err.detail, record.raw_identifiers()))
    except DicomDecodeError as err:
        return Reject(record.source, err.reason, deid.scrub(err.detail, record.raw_identifiers()))
    except OSError as err:  # mask or image vanished / lost permission between listing and decoding
        return Reject(record.source, "unreadable", deid.scrub(f"{type(err).__name__}: {err}", record.raw_identifiers()))


def _make_sample(record: BreastRecord, spec: SampleSpec) -> Sample:
    files: dict[str, bytes] = {}
    roi_rejects: list[Reject] = []
    views_json: dict[str, Any] = {}
    # Both headers are read before any text is written: a report of one view may quote the other's ids.
    decoded_views = {view: decode_dicom(record.views[view].path, min_size=spec.image_size) for view in VIEWS}
    known = deid.KnownIdentifiers()
    known.add_raw_ids(record.raw_identifiers())
    burned_in: set[str] = set()
    for view, decoded in decoded_views.items():
        known.add_header(decoded.identifiers)
        if decoded.burned_in and not spec.allow_burned_in:
            raise _Rejected(
                deid.BURNED_IN_REASON,
                f"{view.upper()}: DICOM {' and '.join(decoded.burned_in)} = YES (identifying text or "
                "features in the pixels); shards.allow_burned_in=true keeps such images",
            )
        burned_in.update(decoded.burned_in)
    cleaner = deid.TextCleaner(known, spec.phi_policy)
    for view in VIEWS:
        vrec = record.views[view]
        decoded = decoded_views[view]
        if decoded.laterality in ("L", "R") and decoded.laterality != record.laterality:
            raise _Rejected(
                "laterality_mismatch",
                f"{view.upper()}: DICOM ImageLaterality {decoded.laterality} but the CSV says {record.laterality}",
            )
        boxes, labels, birads, mask, dropped = _annotations(vrec, decoded, view)
        labels = [cleaner.clean(label, f"{view.upper()} box label #{i + 1}") for i, label in enumerate(labels)]
        roi_rejects += [
            Reject(record.source, "mask_size_mismatch", deid.scrub(d, record.raw_identifiers())) for d in dropped
        ]
        out = preprocess_view(
            decoded,
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            record.laterality,
            spec.image_size,
            flip_to=spec.flip_to,
            mask=mask,
        )
        out_boxes = np.asarray(out.boxes, dtype=np.float64).reshape(-1, 4)
        flags = list(out.box_flags)
        chest_wall = spec.flip_to if spec.flip_to != "none" else chest_wall_side(record.laterality)
        findings = [
            Finding(label, _box4(box), b)
            for box, label, b, flag in zip(out_boxes, labels, birads, flags)
            if flag != "outside"
        ]
        report = (
            vrec.report
            or record.report
            or view_report(
                laterality=record.laterality,
                view=view,
                density=record.density,
                birads=record.birads,
                findings=findings,
                content=_content_box(out.transform),
                chest_wall=chest_wall,
                label_malignant=record.label_malignant,
                label_source=record.label_source,
            )
        )
        if spec.rewriter is not None and not (vrec.report or record.report):
            report = spec.rewriter.rewrite(
                report,
                {
                    "view": view,
                    "laterality": record.laterality,
                    "density": record.density,
                    "birads": record.birads,
                    "label_malignant": record.label_malignant,
                    "label_source": record.label_source,
                    "findings": [{"label": f.label, "box": f.box, "birads": f.birads} for f in findings],
                },
            )
        # Every report (CSV text, template, rewriter output) passes the same layer before it is stored.
        report = cleaner.clean(report, f"{view.upper()} report")
        files[image_file(view)] = encode_pixels(np.asarray(out.image, dtype=np.uint16))
        if out.mask is not None:
            files[mask_file(view)] = encode_pixels((np.asarray(out.mask) > 0).astype(np.uint8) * 255)
        views_json[view] = {
            "boxes": [[round(float(v), 3) for v in box] for box in out_boxes],
            "box_labels": list(labels),
            "box_flags": flags,
            "report": report,
            "transform": _jsonable(out.transform),
        }
    meta = deid.whitelist(
        {
            "schema": SCHEMA_VERSION,
            "dataset": record.dataset,
            "breast_id": breast_key(record, spec.salt),
            "patient_id": patient_key(record, spec.salt),
            "laterality": record.laterality,
            "split": record.split,
            "label": {"malignant": int(record.label_malignant), "source": record.label_source},
            "density": record.density,
            "birads": record.birads,
            "views": views_json,
        }
    )
    files["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    counts = {"identifiers_removed": cleaner.identifiers_removed, "phi_redacted": int(cleaner.phi_redacted > 0),
              "burned_in_kept": int(bool(burned_in))}  # fmt: skip
    return Sample(
        key=meta["breast_id"], files=files, label=int(record.label_malignant), deid=counts, rejects=roi_rejects
    )


def _content_box(transform: dict[str, Any]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the breast in the stored image: the resized crop, without the padding."""
    y0, x0, y1, x1 = transform["crop"]
    sy, sx = transform["scale"]
    top, left = transform["pad"]
    return float(left), float(top), float(left + (x1 - x0) * sx), float(top + (y1 - y0) * sy)


def _annotations(
    vrec: ViewRecord, decoded: DecodedImage, view: str
) -> tuple[list[list[float]], list[str], list[int | None], np.ndarray | None, list[str]]:
    """Boxes, labels, BI-RADS and the lesion mask of one view, all in the DICOM grid, and the details of the
    ROIs left out because their mask does not fit the image (``mask_size_mismatch``)."""
    height, width = decoded.original_shape
    boxes = [list(b) for b in vrec.boxes]
    labels = list(vrec.box_labels)
    birads = list(vrec.finding_birads) + [None] * (len(labels) - len(vrec.finding_birads))
    mask = None
    dropped: list[str] = []
    if vrec.mask_candidates:
        boxes, kept = [], []
        for index, group in enumerate(vrec.mask_candidates):
            try:
                roi = _load_mask(group, decoded.original_shape, view, index)
            except _RoiMismatch as err:
                dropped.append(str(err))
                continue
            ys, xs = np.nonzero(roi)
            if ys.size == 0:
                raise _Rejected("empty_mask", f"{view.upper()}: ROI mask #{index + 1} has no lesion pixels")
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
            kept.append(index)
            mask = roi if mask is None else (mask | roi)
        labels = [labels[i] for i in kept if i < len(labels)]
        birads = [birads[i] for i in kept if i < len(birads)]
    elif vrec.mask_path:
        try:
            mask = _load_mask([vrec.mask_path], decoded.original_shape, view, 0)
        except _RoiMismatch as err:
            dropped.append(str(err))
    for box in boxes:
        # Entirely off the image: the annotation belongs to another image or another grid.
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            raise _Rejected("box_outside_image", f"{view.upper()}: box {box} lies outside the {height}x{width} image")
    return boxes, labels, birads, mask, dropped


def _read_mask_pixels(path: str) -> np.ndarray:
    """A mask file (DICOM, or PNG for the generic CSV) as a bool array."""
    if path.lower().endswith((".png", ".tif", ".tiff", ".bmp")):
        with Image.open(path) as img:
            return np.asarray(img.convert("L")) > 0
    import pydicom

    ds = pydicom.dcmread(path)
    return np.asarray(ds.pixel_array) > 0


def _mask_shape(path: str) -> tuple[int, int]:
    if path.lower().endswith((".png", ".tif", ".tiff", ".bmp")):
        with Image.open(path) as img:
            return img.height, img.width
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


# A mask scaled onto its image must keep its aspect ratio within this much; past it the mask was drawn on
# another grid (or belongs to another image) and a resized box lands beside the lesion.
MASK_ASPECT_TOLERANCE = 0.01


def _load_mask(candidates: list[str], shape: tuple[int, int], view: str, index: int) -> np.ndarray:
    """The candidate whose size equals the image; else the largest one scaled to the image grid when its aspect
    ratio matches the image's within ``MASK_ASPECT_TOLERANCE``; else :class:`_RoiMismatch`."""
    sized, errors = [], []
    for path in candidates:
        try:
            sized.append((_mask_shape(path), path))
        except Exception as err:  # unreadable candidate: another one may still be the mask
            errors.append(type(err).__name__)
    if not sized:
        raise _Rejected(
            "bad_mask",
            f"{view.upper()}: no readable ROI mask file for abnormality #{index + 1} "
            f"({', '.join(errors) or 'no candidates'})",
        )
    exact = [path for s, path in sized if s == tuple(shape)]
    if exact:
        return _read_mask_pixels(exact[0])
    # The CBIS-DDSM lesion crop sits next to the mask and is much smaller; the mask is the largest file,
    # sometimes a few pixels off the image size: bring it onto the image grid.
    ((mh, mw), path) = max(sized, key=lambda item: item[0][0] * item[0][1])
    aspect_error = abs((mh / max(mw, 1)) / (shape[0] / max(shape[1], 1)) - 1.0)
    if aspect_error > MASK_ASPECT_TOLERANCE:
        raise _RoiMismatch(
            f"{view.upper()}: ROI mask #{index + 1} is {mh}x{mw} but the image is "
            f"{shape[0]}x{shape[1]} (aspect ratio off by {aspect_error:.1%}, more than "
            f"{MASK_ASPECT_TOLERANCE:.0%}): ROI left out"
        )
    return _resize_nearest(_read_mask_pixels(path), shape)


def _box4(box: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(img) > 0


def _jsonable(value: Any) -> Any:
    """numpy scalars / arrays / tuples → plain JSON types (floats rounded for stable bytes)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value
