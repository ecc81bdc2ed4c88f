"""Dataset adapters: one module per dataset turns its CSVs into ``BreastRecord``s and ``Reject``s.

Every adapter is a function ``read(cfg: ShardsConfig) -> AdapterResult`` registered in ``ADAPTERS``
under the ``shards.dataset`` name. Shared CSV helpers live here so each adapter only states its
dataset's columns and rules.

Policy for a CSV that lacks a required column: a fatal :class:`AdapterError` naming the file and the
missing columns (nothing in such a file can be trusted, so there is nothing to reject row by row).
Every other problem is a :class:`~mmclip_dist.data.build.records.Reject` for the row or breast concerned.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mmclip_dist.data.build.records import AdapterResult, BreastRecord, Laterality, Reject, ViewRecord
from mmclip_dist.data.shard_format import VIEWS

if TYPE_CHECKING:
    from mmclip_dist.config import ShardsConfig

ADAPTERS = {"vindr": "vindr", "rsna": "rsna", "cbis": "cbis", "generic": "generic"}


class AdapterError(ValueError):
    """A dataset input that cannot be read at all (missing file, missing columns)."""


def read_dataset(cfg: ShardsConfig) -> AdapterResult:
    """Run the adapter named by ``cfg.dataset``."""
    if cfg.dataset not in ADAPTERS:
        raise AdapterError(f"shards.dataset={cfg.dataset!r}: unknown adapter (known: {sorted(ADAPTERS)})")
    module = importlib.import_module(f"mmclip_dist.data.build.adapters.{ADAPTERS[cfg.dataset]}")
    return module.read(cfg)


def read_csv(path: Path, required: tuple[str, ...] | list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV as ``("file.csv:line", row)``; fatal error if the file or a required column is missing."""
    if not path.is_file():
        raise AdapterError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise AdapterError(f"{path}: missing column(s) {missing}; found {header}")
        reader.fieldnames = header
        for row in reader:
            # reader.line_num is the physical line the row ended on: what an editor shows.
            yield f"{path.name}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k}


_LATERALITY: dict[str, Laterality] = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


def parse_laterality(value: str) -> Laterality | None:
    """'L'/'R' from L, R, LEFT, RIGHT (any case); None when unknown."""
    return _LATERALITY.get(value.strip().upper())


def parse_view(value: str) -> str | None:
    """'cc'/'mlo' from CC/MLO (any case); None for every other projection (AT, LM, ML, ...)."""
    return {"CC": "cc", "MLO": "mlo"}.get(value.strip().upper())


def parse_laterality_view(
    row: dict[str, str],
    source: str,
    laterality_column: str,
    view_column: str,
    rejects: list[Reject],
    *,
    other_view: str = "bad_view",
) -> tuple[Laterality, str] | None:
    """``(laterality, view)`` of an image row; None after appending the row's reject to ``rejects``:
    ``bad_laterality`` first, then ``other_view`` (``bad_view`` by default; RSNA passes ``other_view``:
    its AT/LM/ML projections are unused images, not lost data)."""
    laterality = parse_laterality(row[laterality_column])
    if laterality is None:
        rejects.append(
            Reject(
                source, "bad_laterality", f"{laterality_column} {row[laterality_column]!r} is not L/R (or LEFT/RIGHT)"
            )
        )
        return None
    view = parse_view(row[view_column])
    if view is None:
        rejects.append(Reject(source, other_view, f"{view_column} {row[view_column]!r} is not CC or MLO"))
        return None
    return laterality, view


def parse_box(values: list[str], source: str) -> tuple[list[float] | None, Reject | None]:
    """``[x1, y1, x2, y2]`` from four strings; all empty → (None, None); bad → (None, Reject)."""
    if all(v == "" for v in values):
        return None, None
    try:
        box = [float(v) for v in values]
    except ValueError:
        return None, Reject(source, "bad_box", f"box coordinates {values} are not numbers")
    if any(v != v for v in box):  # NaN
        return None, Reject(source, "bad_box", f"box coordinates {values} contain NaN")
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, Reject(source, "inverted_box", f"box {box} has x2 <= x1 or y2 <= y1")
    return box, None


class BreastAssembler:
    """Collects views per breast, rejecting duplicates and (per ``missing_view``) incomplete breasts."""

    def __init__(self, missing_view: str) -> None:
        self.missing_view = missing_view
        self.breasts: dict[str, BreastRecord] = {}
        self.order: list[str] = []
        self.rejects: list[Reject] = []
        self.bad: set[str] = set()  # breasts already rejected: later rows of them are absorbed

    def reject_breast(self, breast_id: str, reject: Reject) -> None:
        if breast_id not in self.bad:
            self.rejects.append(reject)
        self.bad.add(breast_id)
        self.breasts.pop(breast_id, None)

    def add_view(self, record: BreastRecord, view: str, view_record: ViewRecord) -> None:
        """Add one view; ``record`` provides the breast fields when the breast is new."""
        if record.breast_id in self.bad:
            return
        breast = self.breasts.get(record.breast_id)
        if breast is None:
            record.views = {}
            self.breasts[record.breast_id] = breast = record
            self.order.append(record.breast_id)
        if view in breast.views:
            self.rejects.append(
                Reject(
                    view_record.source,
                    "duplicate_view",
                    f"second {view.upper()} image for the breast (first at "
                    f"{breast.views[view].source}); the first is kept",
                )
            )
            return
        breast.views[view] = view_record
        breast.source = ",".join(sorted({*breast.source.split(","), view_record.source} - {""}))

    def finish(self) -> list[BreastRecord]:
        """Complete breasts in first-seen order; incomplete ones rejected or duplicated per config."""
        out = []
        for breast_id in self.order:
            breast = self.breasts.get(breast_id)
            if breast is None:
                continue
            missing = [v for v in VIEWS if v not in breast.views]
            if missing and (self.missing_view == "skip" or len(missing) == 2):
                self.rejects.append(
                    Reject(breast.source, "missing_view", f"breast has no {'/'.join(m.upper() for m in missing)} image")
                )
                continue
            for view in missing:
                # missing_view=duplicate: the view it has stands in for the one it lacks.
                other = breast.views["mlo" if view == "cc" else "cc"]
                breast.views[view] = ViewRecord(**{**other.__dict__})
                breast.extra["duplicated_view"] = view
            out.append(breast)
        return out


def check_files(records: list[BreastRecord], rejects: list[Reject]) -> list[BreastRecord]:
    """Drop breasts whose image files do not exist (a reject each), before any decoding starts."""
    kept = []
    for record in records:
        missing = [v for v in record.views.values() if not Path(v.path).exists()]
        if missing:
            rejects.append(Reject(missing[0].source, "missing_file", "image file listed in the CSV does not exist"))
        else:
            kept.append(record)
    return kept
