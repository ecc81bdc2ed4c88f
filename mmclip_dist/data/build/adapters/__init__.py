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
import dataclasses
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from mmclip_dist.data.build.records import AdapterResult, BreastRecord, Laterality, Reject, ViewRecord
from mmclip_dist.data.shard_format import VIEWS

if TYPE_CHECKING:
    from mmclip_dist.config import ShardsConfig

ADAPTERS = {"vindr": "vindr", "rsna": "rsna", "cbis": "cbis", "generic": "generic"}


class AdapterError(ValueError):
    """A dataset input that cannot be read at all (missing file, missing columns)."""


# What spreadsheet and pandas exports write for "no value": an empty cell, or NaN spelled out.
MISSING_VALUES = frozenset({"", "nan", "na", "n/a", "none", "null"})


class BadValue(ValueError):
    """One CSV cell that does not hold what its column must: the message names only that column and value."""

    def __init__(self, column: str, value: str, expected: str) -> None:
        self.column, self.value, self.expected = column, value, expected
        super().__init__(f"{column} {value!r} is not {expected}")


@overload
def parse_number(
    row: dict[str, str],
    column: str,
    *,
    integer: Literal[True] = True,
    low: float | None = None,
    high: float | None = None,
    required: bool = False,
) -> int | None: ...


@overload
def parse_number(
    row: dict[str, str],
    column: str,
    *,
    integer: Literal[False],
    low: float | None = None,
    high: float | None = None,
    required: bool = False,
) -> float | None: ...


def parse_number(
    row: dict[str, str],
    column: str,
    *,
    integer: bool = True,
    low: float | None = None,
    high: float | None = None,
    required: bool = False,
) -> int | float | None:
    """The number in ``row[column]`` as real exports write it: ``1``, ``1.0``, `` 1 ``; empty or ``nan`` → None
    (``BadValue`` when ``required``). ``integer`` accepts only whole values (``1.0`` → 1; ``1.5`` is bad);
    ``low``/``high`` bound it (inclusive). Raises :class:`BadValue` naming the column and the value."""
    raw = row.get(column) or ""
    text = raw.strip()
    span = f" in {low:g}..{high:g}" if low is not None and high is not None else ""
    expected = (f"an integer{span}" if integer else f"a number{span}") + (" (required)" if required else "")
    if text.lower() in MISSING_VALUES:
        if required:
            raise BadValue(column, raw, expected)
        return None
    try:
        number = float(text)
    except ValueError:
        raise BadValue(column, raw, expected) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise BadValue(column, raw, expected)
    if integer and not number.is_integer():
        raise BadValue(column, raw, expected)
    if (low is not None and number < low) or (high is not None and number > high):
        raise BadValue(column, raw, expected)
    return int(number) if integer else number


def parse_id(value: str) -> str:
    """An id column as written by an export that stored it as a float (``462822612.0`` → ``462822612``)."""
    text = value.strip()
    head, dot, tail = text.partition(".")
    return head if dot and head.isdigit() and tail and set(tail) == {"0"} else text


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


def parse_box(
    values: list[str],
    source: str,
    columns: list[str] | None = None,
) -> tuple[list[float] | None, Reject | None]:
    """``[x1, y1, x2, y2]`` from four strings (named ``columns`` in messages); all empty/nan → (None, None);
    bad → (None, Reject)."""
    columns = columns or ["x1", "y1", "x2", "y2"]
    row = dict(zip(columns, values))
    if all(v.strip().lower() in MISSING_VALUES for v in values):
        return None, None
    try:
        box = [float(parse_number(row, c, integer=False, required=True)) for c in columns]  # type: ignore[arg-type]
    except BadValue as err:
        return None, Reject(source, "bad_box", str(err))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, Reject(source, "inverted_box", f"box {box} has x2 <= x1 or y2 <= y1")
    return box, None


def join_sources(*sources: str) -> str:
    """``"a.csv:2,a.csv:3"`` from several such strings: every row once, in first-seen order."""
    out: list[str] = []
    for source in sources:
        for part in source.split(","):
            if part and part not in out:
                out.append(part)
    return ",".join(out)


# Row rejects that cannot be tied to a breast (no id or laterality): each counts as one input seen.
UNASSIGNED_REASONS = frozenset({"bad_id", "bad_laterality"})


def count_inputs(assembler: BreastAssembler, rejects: list[Reject]) -> int:
    """The manifest's ``inputs``: breasts seen in the CSVs (kept or rejected) plus rows with no breast."""
    return len(assembler.seen) + sum(r.reason in UNASSIGNED_REASONS for r in rejects)


class BreastAssembler:
    """Collects views per breast, rejecting duplicates and (per ``missing_view``) incomplete breasts.

    A breast-level reject lists every CSV row of that breast (``source``): the rows read before the
    reject and the rows read after it, which it absorbs, so each input row lands in exactly one of a
    sample or one reject."""

    def __init__(self, missing_view: str) -> None:
        self.missing_view = missing_view
        self.breasts: dict[str, BreastRecord] = {}
        self.order: list[str] = []
        self.rejects: list[Reject] = []
        self.bad: dict[str, int] = {}  # rejected breast → index of its reject; later rows are absorbed into it
        self.seen: set[str] = set()

    def reject_breast(self, breast_id: str, reject: Reject) -> None:
        self.seen.add(breast_id)
        breast = self.breasts.pop(breast_id, None)
        if breast_id in self.bad:
            self._absorb(breast_id, reject.source)
            return
        source = join_sources(breast.source if breast is not None else "", reject.source)
        self.bad[breast_id] = len(self.rejects)
        self.rejects.append(dataclasses.replace(reject, source=source))

    def _absorb(self, breast_id: str, source: str) -> None:
        index = self.bad[breast_id]
        old = self.rejects[index]
        self.rejects[index] = dataclasses.replace(old, source=join_sources(old.source, source))

    def add_view(self, record: BreastRecord, view: str, view_record: ViewRecord) -> None:
        """Add one view; ``record`` provides the breast fields when the breast is new."""
        self.seen.add(record.breast_id)
        if record.breast_id in self.bad:
            self._absorb(record.breast_id, view_record.source)
            return
        breast = self.breasts.get(record.breast_id)
        if breast is None:
            record.views = {}
            record.source = ""
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
        breast.source = join_sources(breast.source, view_record.source)

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
            views = ", ".join(f"{v.upper()} ({r.source})" for v, r in record.views.items() if r in missing)
            rejects.append(
                Reject(record.source, "missing_file", f"image file listed in the CSV does not exist: {views}")
            )
        else:
            kept.append(record)
    return kept
