"""Downstream task definitions: what each ``eval.task`` predicts, read from a shard sample's metadata.

A task maps one breast's shard ``json`` (docs/architecture.md) to a class index, or -1 when the
sample carries no usable label for it (dropped before fitting and scoring), and says where the label
came from, so every reported number can name its label source:

| task | classes | label | source |
| --- | --- | --- | --- |
| malignancy | benign, malignant | ``label.malignant`` | ``label.source`` (pathology / birads_proxy) |
| mass | absent, present | a box label of either view is "Mass" | annotation (finding boxes) |
| calcification | absent, present | a box label of either view names a calcification | annotation |
| density | A, B, C, D | ``density`` (ACR) | radiologist |
| birads | 1, 2-3, 4-5 | breast ``birads``; 0 (incomplete) and 6 (known cancer) are unknown | radiologist |

Finding tasks need finding annotations: RSNA ships none (every breast would read "absent"), so its
samples are unknown (-1); a generic-CSV breast counts as annotated only when it has box labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmclip_dist.eval.metrics import DENSITY_CLASSES

UNKNOWN = -1
# Datasets whose every finding is boxed and labelled, so "no box of that type" really means absent.
ANNOTATED_DATASETS = frozenset({"vindr", "cbis"})
BIRADS_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (("1", (1,)), ("2-3", (2, 3)), ("4-5", (4, 5)))
"""BI-RADS task classes: negative, benign / probably benign, suspicious / highly suggestive."""

LABEL_SOURCE_TEXT = {
    "pathology": "pathology (biopsy-proven)",
    "birads_proxy": "BI-RADS proxy (radiologist suspicion, not pathology)",
    "annotation": "finding annotations (box labels)",
    "radiologist": "radiologist assessment",
}


def _finding_parts(meta: dict[str, Any]) -> list[str] | None:
    """Lower-cased finding categories of both views (VinDr joins several with ", "); None if unannotated."""
    parts = [
        part.strip().lower()
        for view in (meta.get("views") or {}).values()
        for label in view.get("box_labels") or []
        for part in str(label).split(",")
        if part.strip()
    ]
    dataset = meta.get("dataset")
    if dataset in ANNOTATED_DATASETS or (dataset == "generic" and parts):
        return parts
    return None


def _malignancy(meta: dict[str, Any]) -> int:
    value = (meta.get("label") or {}).get("malignant", UNKNOWN)
    return int(value) if value in (0, 1) else UNKNOWN


def _malignancy_source(meta: dict[str, Any]) -> str:
    return str((meta.get("label") or {}).get("source", "unknown"))


def _has_finding(match: Callable[[str], bool]) -> Callable[[dict[str, Any]], int]:
    def label(meta: dict[str, Any]) -> int:
        parts = _finding_parts(meta)
        return UNKNOWN if parts is None else int(any(match(p) for p in parts))

    return label


def _density(meta: dict[str, Any]) -> int:
    value = meta.get("density")
    return DENSITY_CLASSES.index(value) if value in DENSITY_CLASSES else UNKNOWN


def _birads(meta: dict[str, Any]) -> int:
    value = meta.get("birads")
    for index, (_, members) in enumerate(BIRADS_GROUPS):
        if value in members:
            return index
    return UNKNOWN


@dataclass(frozen=True)
class Task:
    """One downstream task: class names, the label rule and the label source."""

    name: str
    classes: tuple[str, ...]
    description: str
    label_fn: Callable[[dict[str, Any]], int]
    source_fn: Callable[[dict[str, Any]], str]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def label(self, meta: dict[str, Any]) -> int:
        """Class index of one breast, or -1 (unknown)."""
        return self.label_fn(meta)

    def labels(self, metas: Sequence[dict[str, Any]]) -> np.ndarray:
        """``int64 [N]`` class indices (-1 unknown) of a list of shard metadata dicts."""
        return np.array([self.label_fn(m) for m in metas], dtype=np.int64)

    def label_source(self, metas: Sequence[dict[str, Any]]) -> str:
        """The sources of the known labels among ``metas``, e.g. ``"birads_proxy"`` or ``"pathology+birads_proxy"``."""
        sources = sorted({self.source_fn(m) for m in metas if self.label_fn(m) != UNKNOWN})
        return "+".join(sources) if sources else "none"


TASKS: dict[str, Task] = {
    "malignancy": Task(
        "malignancy", ("benign", "malignant"), "benign vs malignant breast", _malignancy, _malignancy_source
    ),
    "mass": Task(
        "mass",
        ("absent", "present"),
        "a mass is annotated on the breast",
        _has_finding(lambda p: p == "mass"),
        lambda _: "annotation",
    ),
    "calcification": Task(
        "calcification",
        ("absent", "present"),
        "calcifications are annotated on the breast",
        _has_finding(lambda p: "calcification" in p),
        lambda _: "annotation",
    ),
    "density": Task("density", DENSITY_CLASSES, "ACR breast density A-D", _density, lambda _: "radiologist"),
    "birads": Task(
        "birads", tuple(name for name, _ in BIRADS_GROUPS), "breast BI-RADS group", _birads, lambda _: "radiologist"
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is an error listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def describe_source(source: str) -> str:
    """Human-readable label source for tables and MLflow tags (``a+b`` sources are spelled out each)."""
    return " + ".join(LABEL_SOURCE_TEXT.get(part, part) for part in source.split("+"))
