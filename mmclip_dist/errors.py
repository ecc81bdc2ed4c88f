"""The one error type for failures the user can fix (bad input, missing file, unreachable service).

The CLI prints it as one line (``error: <what is wrong>; <what to do>``) and exits 1; the traceback only
with ``--debug`` or ``MMCLIP_DEBUG=1`` (``mmclip_dist.cli.main``).
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure: its message says what is wrong and what to do, in one line."""
