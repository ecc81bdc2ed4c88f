"""PHI detector for free text (reports, box labels, CSV fields): the PHI not known in advance.

presidio-analyzer's regex/checksum recognizers (e-mail, phone via ``phonenumbers``, dates, URL, IP,
SSN, credit card), run through ``AnalyzerEngine`` with the ``NoOpNlpEngine`` so no spaCy model is
loaded or downloaded, plus project ``PatternRecognizer``s for what presidio does not cover: MRN /
accession / long ids, month-name and compact dates, NANP phones ``phonenumbers`` rejects, street
addresses, and person names that carry a cue (title, role, label, credential, DICOM ``^``). Chosen by
measurement against scrubadub, commonregex and datafog on a planted-PHI corpus
(``mmclip_devtools/fixtures/phi_corpus.py``; recall per type in docs/shards.md).

    find_phi(text) -> [(start, end, type)]   non-overlapping, sorted
    redact(text)   -> text with typed placeholders, e.g. "[DATE]"
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _without_torch() -> Iterator[None]:
    """presidio imports torch and transformers for NLP engines this detector never uses (NoOpNlpEngine): seconds
    per process, in every shard-build worker. Hide them during that import unless the process already has them."""
    hidden = [name for name in ("torch", "transformers") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import torch" now raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


with _without_torch():
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

# tldextract's default extractor fetches the public-suffix list over HTTP on first use;
# use the snapshot bundled in the wheel instead (no network, no cache dir).
_TLD = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class OfflineEmailRecognizer(EmailRecognizer):
    """presidio's e-mail recognizer validated against the bundled public-suffix snapshot."""

    def validate_result(self, pattern_text: str) -> bool:
        return _TLD(pattern_text).fqdn != ""


_MON = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_D = r"(?:0?[1-9]|[12]\d|3[01])"
_Y = r"(?:1[89]\d\d|20\d\d)"
_CAP = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"  # Capitalised name token (O'Neil, Smith-Jones)
_UP = r"[A-Z]{2,}(?:[-'][A-Z]+)?"  # UPPER-CASE name token
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|Blvd|Court|Ct|Place|Pl|"
    r"Way|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq)\.?"
)


def _pr(entity: str, *patterns: tuple[str, str, float], flags: int | None = None) -> PatternRecognizer:
    kw: dict[str, Any] = {"global_regex_flags": flags} if flags is not None else {}
    return PatternRecognizer(
        supported_entity=entity,
        name=f"project_{entity}_{len(patterns)}_{patterns[0][1][:12]}",
        patterns=[Pattern(n, r, s) for n, r, s in patterns],
        **kw,
    )


_I = re.IGNORECASE | re.MULTILINE | re.DOTALL
_CS = re.MULTILINE | re.DOTALL  # case-sensitive (names need capitals)

PROJECT_RECOGNIZERS = [
    # cued identifiers: the cue stays, the value goes
    _pr(
        "MRN",
        (
            "mrn_cued",
            r"(?<=\b(?:MRN|MR\s?#|MR\s?No\.?|Medical Record (?:Number|No\.?)|Patient ID|PID|"
            r"Pt ID|Hospital (?:Number|No\.?)|Unit (?:Number|No\.?))[\s:#.]{0,3})[A-Z]{0,3}-?\d{4,12}\b",
            0.9,
        ),
        flags=_I,
    ),
    _pr(
        "ACCESSION",
        (
            "acc_cued",
            r"(?<=\b(?:Accession|Acc|ACC)(?:\s?(?:Number|No\.?|#))?[\s:#.]{0,3})"
            r"[A-Z]{0,4}\d{5,14}\b",
            0.9,
        ),
        flags=_I,
    ),
    # any other long digit run / letter-prefixed id: nothing in a mammography report legitimately has >= 7 digits
    _pr("ID", ("long_id", r"\b[A-Z]{0,4}\d{7,}\b", 0.6), flags=_CS),
    # dates presidio's DateRecognizer misses
    _pr(
        "DATE",
        ("d_month_y", rf"\b{_D}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MON}\.?,?\s+{_Y}\b", 0.8),
        ("month_d_y", rf"\b{_MON}\.?\s+{_D}(?:st|nd|rd|th)?,?\s+{_Y}\b", 0.8),
        ("month_y", rf"\b{_MON}\.?\s+{_Y}\b", 0.6),
        ("compact", r"\b(?:1[89]|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b", 0.6),
        ("dmy_any", rf"\b{_D}[./-](?:0?[1-9]|1[0-2])[./-](?:{_Y}|\d\d)\b", 0.6),
        ("d_mon_y", rf"\b{_D}[ -]{_MON}[ -](?:{_Y}|\d\d)\b", 0.7),
        flags=_I,
    ),
    # NANP-shaped phones even when phonenumbers says the number is not valid
    _pr(
        "PHONE",
        (
            "nanp",
            r"(?<![\w.])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
            r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?",
            0.7,
        ),
        flags=_I,
    ),
    # street address (+ optional ", City, ST 12345") and bare ZIP after a state code
    _pr(
        "ADDRESS",
        (
            "street",
            rf"\b\d{{1,6}}\s+(?:[NSEW]\.?\s+)?(?:{_CAP}\s+){{1,3}}{_SUFFIX}"
            rf"(?:,?\s+(?:Apt|Suite|Unit|#)\.?\s*\w+)?"
            rf"(?:,\s*(?:{_CAP}\s?){{1,3}},\s*[A-Z]{{2}}(?:\s+\d{{5}}(?:-\d{{4}})?)?)?",
            0.85,
        ),
        ("po_box", r"\bP\.?\s?O\.?\s+Box\s+\d+\b", 0.85),
        ("state_zip", r"(?<=\b[A-Z]{2}\s)\d{5}(?:-\d{4})?\b", 0.5),
        flags=_CS,
    ),
    # person names: only with a cue (title, role, label, credential, DICOM caret)
    _pr(
        "PERSON",
        ("title", rf"(?<=\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s)(?:{_CAP}\s)?{_CAP}\b", 0.85),
        (
            "label",
            rf"(?<=\b(?:Patient|Pt|Name|Patient Name|Physician|Radiologist|Technologist|Tech|Referring physician|"
            rf"Dictated by|Read by|Signed by|signed|Attending|Provider|cc|CC)[:\s]\s?)"
            rf"(?:Dr\.?\s)?(?:{_CAP}|{_UP})(?:,?\s(?:{_CAP}|{_UP})){{0,2}}\b",
            0.8,
        ),
        ("dicom_caret", rf"\b(?:{_CAP}|{_UP})\^(?:{_CAP}|{_UP})(?:\^[\w.]*){{0,3}}", 0.9),
        ("credential", rf"\b{_CAP}(?:\s{_CAP}){{1,2}}(?=,?\s(?:MD|M\.D\.|DO|RT|RN|NP|PA|PhD)\b)", 0.8),
        ("inverted_md", rf"\b{_CAP},\s{_CAP}(?=,?\s(?:MD|M\.D\.|DO)\b)", 0.8),
        ("intro", rf"\b{_CAP}\s{_CAP}(?=,?\s(?:is an?|was an?|presents|presented|returns|, age)\b)", 0.6),
        flags=_CS,
    ),
]

# words that the name rules must never swallow (report vocabulary that is Capitalised)
_NOT_NAMES = set(
    [
        "Breast",
        "Density",
        "Mass",
        "Left",
        "Right",
        "Bilateral",
        "Impression",
        "Findings",
        "History",
        "Clinical",
        "Technique",
        "Comparison",
        "Exam",
        "Ultrasound",
        "Mammogram",
        "Screening",
        "Diagnostic",
        "The",
        "There",
        "No",
        "Patient",
        "Name",
        "Date",
        "Results",
        "Routine",
        "Stable",
        "Negative",
        "Benign",
        "Dictated",
        "Referring",
        "Electronically",
        "Read",
        "Signed",
        "Tissue",
        "Biopsy",
        "Focal",
        "Grouped",
        "Implants",
        "Skin",
        "Axillary",
        "Family",
        "Short",
        "Recommend",
        "Need",
        "Known",
        "Highly",
        "Low",
        "Probably",
        "Incomplete",
        "Suspicious",
        "Call",
        "Lives",
        "Address",
        "Phone",
        "Email",
        "Tel",
        "Pager",
        "Compared",
        "Born",
        "Last",
        "Accession",
        "Medical",
        "Record",
        "Number",
        "Acc",
        "Follow",
        "Up",
        "Id",
        "Mrn",
        "Dob",
        "Pid",
        "Mr",
    ]
)


def _build_engine() -> AnalyzerEngine:
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(supported_regions=("US", "UK", "CA")),
        DateRecognizer(),
        UrlRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        CreditCardRecognizer(),
        *PROJECT_RECOGNIZERS,
    ):
        registry.add_recognizer(rec)
    return AnalyzerEngine(
        registry=registry,
        supported_languages=["en"],
        nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
    )


_ENGINE: AnalyzerEngine | None = None
_TYPE_MAP = {
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "DATE_TIME": "DATE",
    "US_SSN": "ID",
    "CREDIT_CARD": "ID",
    "IP_ADDRESS": "ID",
    "URL": "URL",
    "PERSON": "NAME",
}
_PRIORITY = ["EMAIL", "ADDRESS", "NAME", "PHONE", "MRN", "ACCESSION", "DATE", "ID", "URL"]


def _engine() -> AnalyzerEngine:
    global _ENGINE
    if _ENGINE is None:
        _cached_phi.cache_clear()  # results of an earlier engine do not carry over
        _ENGINE = _build_engine()
    return _ENGINE


def forget_results() -> None:
    """Empty the results cache (a build starts with it empty: its texts are its own)."""
    _cached_phi.cache_clear()


def find_phi(text: str, threshold: float = 0.3) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, type) spans, sorted; overlapping hits are merged into the union
    span, typed by the highest-priority type among them."""
    engine = _engine()
    return list(_cached_phi(engine, text, threshold))


# The detection is a function of the text alone, and a shard build analyses the same box labels and templated
# reports over and over (~2 ms each).
@functools.lru_cache(maxsize=4096)
def _cached_phi(engine: AnalyzerEngine, text: str, threshold: float) -> tuple[tuple[int, int, str], ...]:
    return tuple(_find_phi(engine, text, threshold))


def _find_phi(engine: AnalyzerEngine, text: str, threshold: float) -> list[tuple[int, int, str]]:
    hits = []
    for r in engine.analyze(text, language="en", score_threshold=threshold):
        typ = _TYPE_MAP.get(r.entity_type, r.entity_type)
        if typ == "NAME":
            toks = text[r.start : r.end].replace("^", " ").replace(",", " ").split()
            if all(t.capitalize() in _NOT_NAMES for t in toks):
                continue
        hits.append((r.start, r.end, typ))
    hits.sort()
    merged: list[list] = []  # [start, end, type]
    for s, e, t in hits:
        if merged and s < merged[-1][1]:
            m = merged[-1]
            m[1] = max(m[1], e)
            m[2] = min(m[2], t, key=lambda x: _PRIORITY.index(x) if x in _PRIORITY else 99)
        else:
            merged.append([s, e, t])
    return [tuple(m) for m in merged]


def redact(text: str) -> str:
    """``text`` with every detected span replaced by its typed placeholder (``[NAME]``, ``[DATE]``, ...)."""
    out, pos = [], 0
    for s, e, t in find_phi(text):
        out.append(text[pos:s])
        out.append(f"[{t}]")
        pos = e
    out.append(text[pos:])
    return "".join(out)
