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
SAMPLE_KEYS = {"schema", "dataset", "breast_id", "patient_id", "laterality", "split", "label", "density",
               "birads", "views"}
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
