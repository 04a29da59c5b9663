"""UID validation (the only DICOM strings allowed into file paths) and the content key.

A UID (PS3.5 9.1) is at most 64 characters of digits and dots, components
without leading zeros (except a lone ``0``), no empty component. Anything
else is rejected before it can reach the file system.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid DICOM UID string."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_RE.match(value) is not None
    )


def validated_uid(value: object, what: str) -> str:
    """Return ``value`` (trailing NUL/space padding removed) if it is a valid UID.

    Raises
    ------
    ValueError
        ``"<what> is not a valid UID"`` (the value itself is not echoed).
    """
    if isinstance(value, str):
        value = value.rstrip("\x00 ")
    if not is_valid_uid(value):
        raise ValueError(f"{what} is not a valid UID")
    return str(value)


def content_hash(sop_instance_uids: Sequence[str]) -> str:
    """SHA-256 (hex) over the sorted SOP Instance UIDs, newline-separated.

    The key of a job's content: the node and ``dopanode analyze`` derive
    output UIDs from it, so the same series gets the same objects both ways.
    """
    joined = "\n".join(sorted(sop_instance_uids))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()
