"""What someone who can write the audit trail can do to it, for the tests of the hash chain."""

from __future__ import annotations

import json

from service.audit_file import chained_line


def rechained(lines: list[str], change: tuple[str, str]) -> list[str]:
    """``lines`` (the trail's, with their newlines) with ``change`` (old, new text) made
    and a new, valid chain: the chain has no secret, so it cannot show this alone."""
    new_hash: dict[str, str] = {}
    out = []
    for line in lines:
        record = json.loads(line.replace(*change))
        old = record.pop("hash")
        record["prev"] = new_hash.get(record["prev"], record["prev"])
        text, new_hash[old] = chained_line(record)
        out.append(text + "\n")
    return out
