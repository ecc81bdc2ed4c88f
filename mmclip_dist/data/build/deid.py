"""De-identification: salted id hashing, the whitelist of sample metadata, scrubbing of messages.

Nothing read from a DICOM header is ever copied to the output: sample ``json`` files are built from
the whitelist below, ids are keyed hashes (HMAC-SHA256 with a secret salt, so a raw id cannot be
confirmed by hashing guesses without the salt), and free text that may quote a path or an id
(decoder error messages) goes through ``scrub`` before it is written to rejects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

from mmclip_dist.config import check_salt

SALT_ENV = "MMCLIP_ID_SALT"
# Used only for the synthetic dataset, whose ids identify nobody; real data must bring its own salt.
SYNTHETIC_SALT = "mmclip-synthetic-not-secret"

# Keys a sample json may contain, per level; anything else is dropped (and a test asserts it).
SAMPLE_KEYS = {
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
LABEL_KEYS = {"malignant", "source"}
VIEW_KEYS = {"boxes", "box_labels", "box_flags", "report", "transform"}
# The geometric transform is numbers only (plus the side words below): a string there could carry text
# from a header, so strings outside this set are dropped.
TRANSFORM_WORDS = {"left", "right", "none", "L", "R"}


class SaltError(ValueError):
    """No salt for a dataset that holds real patient ids."""


def resolve_salt(config_salt: str, synthetic: bool) -> str:
    """The salt from the config, else ``MMCLIP_ID_SALT``; only synthetic data may fall back to a default."""
    salt = config_salt or os.environ.get(SALT_ENV, "")
    if salt:
        try:
            check_salt(salt, "shards.salt" if config_salt else SALT_ENV)
        except ValueError as err:
            raise SaltError(str(err)) from None
        return salt
    if synthetic:
        return SYNTHETIC_SALT
    raise SaltError(
        f"no id salt: set shards.salt or the {SALT_ENV} environment variable (keep it secret and the same "
        "for every build of a dataset, so ids and train/test assignment stay stable)"
    )


def hash_id(raw: str, salt: str, kind: str) -> str:
    """Keyed hash of a raw id, 32 hex chars (no dots, so it is a valid WebDataset key)."""
    digest = hmac.new(salt.encode(), f"{kind}\x00{raw}".encode(), hashlib.sha256).hexdigest()
    return digest[:32]


def whitelist(sample: dict[str, Any]) -> dict[str, Any]:
    """Drop every key of a sample json that is not explicitly allowed."""
    out = {k: v for k, v in sample.items() if k in SAMPLE_KEYS}
    if isinstance(out.get("label"), dict):
        out["label"] = {k: v for k, v in out["label"].items() if k in LABEL_KEYS}
    views = {}
    for name, view in (out.get("views") or {}).items():
        view = {k: v for k, v in view.items() if k in VIEW_KEYS}
        if isinstance(view.get("transform"), dict):
            view["transform"] = {k: v for k, v in view["transform"].items() if _is_geometry(v)}
        views[name] = view
    if "views" in out:
        out["views"] = views
    return out


def _is_geometry(value: Any) -> bool:
    if isinstance(value, (bool, int, float)) or value is None:
        return True
    if isinstance(value, str):
        return value in TRANSFORM_WORDS
    if isinstance(value, (list, tuple)):
        return all(_is_geometry(v) for v in value)
    return False


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every raw id / path (and their file names and folder names) in a message by ``<redacted>``."""
    pieces: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        pieces.add(secret)
        # A decoder may quote only part of a path: the file name, its stem, or a folder.
        for part in re.split(r"[\\/]", secret):
            if len(part) >= 4:
                pieces.add(part)
                pieces.add(part.rsplit(".", 1)[0])
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 4:
            text = text.replace(piece, "<redacted>")
    return text


# --------------------------------------------------------------------------------------------------
# Free text: every report, box label and CSV text field passes through ``TextCleaner.clean`` before it
# can reach a shard, a reject, a log or MLflow. (a) The record's own identifiers (CSV ids, DICOM header
# values) are removed exactly, in every spelling the header allows; (b) the PHI detector looks for what is
# not known in advance; (c) text that still trips it is rejected (``phi_in_text``) or, with
# ``shards.phi_policy=redact``, redacted with typed placeholders.

PHI_POLICIES = ("reject", "redact")
PHI_REASON = "phi_in_text"
BURNED_IN_REASON = "burned_in_annotation"
# DICOM attributes that identify the patient, the study or the people involved, with how they are spelt:
# person names (PN, "FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX"), dates (DA, YYYYMMDD), ids, and places.
HEADER_IDENTIFIERS: dict[str, str] = {
    "PatientName": "name",
    "OtherPatientNames": "name",
    "PatientBirthName": "name",
    "PatientMotherBirthName": "name",
    "ReferringPhysicianName": "name",
    "PerformingPhysicianName": "name",
    "NameOfPhysiciansReadingStudy": "name",
    "PhysiciansOfRecord": "name",
    "OperatorsName": "name",
    "PatientID": "id",
    "OtherPatientIDs": "id",
    "AccessionNumber": "id",
    "StudyID": "id",
    "PatientTelephoneNumbers": "id",
    "PatientBirthDate": "date",
    "StudyDate": "date",
    "SeriesDate": "date",
    "AcquisitionDate": "date",
    "ContentDate": "date",
    "InstitutionName": "place",
    "InstitutionAddress": "place",
    "PatientAddress": "place",
}
# Attributes whose value YES means the pixels themselves may identify the patient.
BURNED_IN_ATTRIBUTES = ("BurnedInAnnotation", "RecognizableVisualFeatures")
_PLACEHOLDER = {"name": "[NAME]", "id": "[ID]", "date": "[DATE]", "place": "[ADDRESS]"}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip
_ALNUM_EDGE = (r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])")


class PhiFound(ValueError):
    """Text that still holds PHI after the record's identifiers were removed (policy ``reject``)."""

    def __init__(self, what: str, types: list[str]) -> None:
        super().__init__(f"{what}: {len(types)} PHI span(s) ({', '.join(sorted(set(types)))}) left after removing "
                         "the record's identifiers; shards.phi_policy=redact keeps it with typed placeholders")  # fmt: skip
        self.what = what
        self.types = types


def _date_pattern(value: str) -> str | None:
    """Every common spelling of a DICOM date (YYYYMMDD; legacy YYYY.MM.DD / YYYY-MM-DD)."""
    digits = re.sub(r"\D", "", value)
    if len(digits) != 8:
        return None
    y, m, d = digits[:4], int(digits[4:6]), int(digits[6:8])
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    sep = r"[-/. ]"
    year = rf"(?:{y}|'?{y[2:]})"
    mm, dd = rf"0?{m}", rf"0?{d}"
    sept = r"|Sept\.?" if m == 9 else ""
    mon = rf"(?:{_MONTHS[m - 1]}|{_MONTHS[m - 1][:3]}\.?{sept})"
    day = rf"{dd}(?:st|nd|rd|th)?"
    forms = [
        rf"{y}{sep}?{m:02d}{sep}?{d:02d}",  # ISO / compact
        rf"{y}{sep}{mm}{sep}{dd}",
        rf"{mm}{sep}{dd}{sep}{year}",  # US
        rf"{dd}{sep}{mm}{sep}{year}",  # European
        rf"{mon}{sep}?\s*{day},?\s*{year}",  # April 2, 1961 / Apr-02-1961
        rf"{day}{sep}?\s*(?:of\s+)?{mon},?{sep}?\s*{year}",  # 2 April 1961 / 02-APR-1961
    ]
    return rf"(?<!\d)(?:{'|'.join(forms)})(?!\d)"


def _id_pattern(value: str) -> list[str]:
    """An id with or without separators between its characters, and its digit run on its own."""
    chars = re.sub(r"[^A-Za-z0-9]", "", value)
    if len(chars) < 4:
        return []  # too short to remove without destroying ordinary numbers and words
    patterns = [_ALNUM_EDGE[0] + r"[-\s./]?".join(re.escape(c) for c in chars) + _ALNUM_EDGE[1]]
    digits = re.findall(r"\d{5,}", chars)
    patterns += [rf"(?<!\d){run}(?!\d)" for run in digits if run != chars]
    return patterns


def _name_patterns(value: str) -> list[str]:
    """Family, given and middle name of a PN value, each on its own (so every order and separator is covered)."""
    out = []
    for group in value.split("="):  # alphabetic=ideographic=phonetic representations
        for part in group.split("^")[:3]:  # prefix and suffix ("Dr", "Jr") identify nobody
            for token in re.split(r"[\s,]+", part):
                if len(token) >= 3:
                    out.append(_ALNUM_EDGE[0] + re.escape(token) + _ALNUM_EDGE[1])
    return out


def _place_patterns(value: str) -> list[str]:
    """The whole place (whitespace-tolerant) and each of its comma / ``^`` / line parts."""
    parts = {value, *re.split(r"[\^\n\r,;]+", value)}
    out = []
    for part in parts:
        words = part.split()
        if len("".join(words)) >= 5:
            out.append(_ALNUM_EDGE[0] + r"[\s^,]+".join(re.escape(w) for w in words) + _ALNUM_EDGE[1])
    return out


class KnownIdentifiers:
    """The identifiers of one record (CSV ids, DICOM header values), as removable patterns by kind."""

    def __init__(self) -> None:
        self._patterns: dict[str, set[str]] = {kind: set() for kind in _PLACEHOLDER}
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def add(self, kind: str, value: str) -> None:
        value = str(value).strip()
        if not value:
            return
        if kind == "date":
            pattern = _date_pattern(value)
            new = [pattern] if pattern else []
        elif kind == "name":
            new = _name_patterns(value)
        elif kind == "place":
            new = _place_patterns(value)
        else:
            new = _id_pattern(value)
        self._patterns[kind].update(new)
        self._compiled = None

    def add_raw_ids(self, values: list[str]) -> None:
        """CSV ids; for a path only its file name without extension (folders are dataset layout, not identity)."""
        for value in values:
            name = re.split(r"[\\/]", value)[-1]
            self.add("id", re.sub(r"\.[A-Za-z]{2,5}$", "", name))

    def add_header(self, header: dict[str, list[str]]) -> None:
        """``{attribute keyword: values}`` as read by ``dicom.decode_dicom`` (keys of ``HEADER_IDENTIFIERS``)."""
        for keyword, values in header.items():
            for value in values:
                self.add(HEADER_IDENTIFIERS.get(keyword, "id"), value)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, placeholder)`` of every occurrence of a known identifier, overlaps merged."""
        if self._compiled is None:
            self._compiled = [(re.compile(p, re.IGNORECASE), _PLACEHOLDER[kind])
                              for kind, patterns in self._patterns.items() for p in patterns]  # fmt: skip
        spans = [
            (m.start(), m.end(), ph)
            for pattern, ph in self._compiled
            for m in pattern.finditer(text)
            if m.end() > m.start()
        ]
        return _merge(spans)

    def remove(self, text: str) -> tuple[str, int]:
        """``text`` with every known identifier replaced by its typed placeholder, and how many were."""
        spans = self.find(text)
        return _replace(text, spans), len(spans)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sorted, non-overlapping spans; an overlap becomes one span with the first span's placeholder."""
    merged: list[list[Any]] = []
    for start, end, label in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, label])
    return [(a, b, c) for a, b, c in merged]


def _replace(text: str, spans: list[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, label in spans:
        out += [text[pos:start], label]
        pos = end
    return "".join(out) + text[pos:]


class TextCleaner:
    """(a) exact removal of ``known``, (b) the PHI detector, (c) the policy; counts what it did."""

    def __init__(self, known: KnownIdentifiers, policy: str) -> None:
        if policy not in PHI_POLICIES:
            raise ValueError(f"shards.phi_policy={policy!r}: expected one of {PHI_POLICIES}")
        self.known = known
        self.policy = policy
        self.identifiers_removed = 0
        self.phi_redacted = 0  # texts in which the detector found PHI that was then redacted

    def clean(self, text: str, what: str) -> str:
        """The de-identified ``text``; raises :class:`PhiFound` under policy ``reject``. ``what`` names the
        text in the error (e.g. "CC report"), never its content."""
        from mmclip_dist.data.build import phi_detector

        # Both look at the original text: a removed identifier must not hide the cue ("Pt", "Dr.") the detector
        # needs for the next word. PHI the exact removal already covers is not "left after removing".
        known = self.known.find(text)
        found = [(a, b, f"[{t}]") for a, b, t in phi_detector.find_phi(text)]
        left = [span for span in found if not any(k[0] <= span[0] and span[1] <= k[1] for k in known)]
        self.identifiers_removed += len(known)
        if left and self.policy == "reject":
            raise PhiFound(what, [label.strip("[]") for _, _, label in left])
        self.phi_redacted += bool(left)
        return _replace(text, _merge(known + found))


def load_detector() -> None:
    """Import and build the detector now (the builder calls it before forking its workers, which then share it),
    with an empty results cache."""
    from mmclip_dist.data.build import phi_detector

    phi_detector.find_phi("")
    phi_detector.forget_results()


def redact_phi(text: str) -> str:
    """Detector-only redaction, for messages that quote input (an adapter's reject details): a message cannot
    be rejected, so whatever the detector finds in it is replaced by typed placeholders."""
    from mmclip_dist.data.build import phi_detector

    return phi_detector.redact(text)


def detector_version() -> str:
    """The detector's library and version, recorded in the manifest."""
    from importlib.metadata import version

    return f"presidio-analyzer {version('presidio-analyzer')} pattern recognizers + project patterns (no NLP model)"
