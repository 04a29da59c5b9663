"""Deterministic UIDs for the objects dopanode sends back.

A retried job must produce the same SR and picture report, so the PACS sees a
replacement rather than a twin (PS3.4: an instance with an existing SOP
Instance UID replaces the stored one). Every UID is therefore derived from the
job key, the algorithm identity (model checksum when a model is installed,
else name and version) and the kind of object, with
:func:`pydicom.uid.generate_uid` (a SHA-512 hash under pydicom's root, 64
characters at most).
"""

from __future__ import annotations

import re

from pydicom.uid import UID, generate_uid

from service.report.identity import AlgorithmInfo

#: An object kind: lower-case words joined by "-" or "_" (e.g. ``"sr-instance"``,
#: ``"tracking-caudate_left"``, ``"seg-series"``); each pipeline names its own.
_KIND_RE = re.compile(r"^[a-z0-9]+([_-][a-z0-9]+)*$")

#: The device observer of every SR: one fixed UID for dopanode itself, so that
#: all of its reports name the same device.
DEVICE_OBSERVER_UID = generate_uid(entropy_srcs=["dopanode", "device-observer"])


def algorithm_key(algorithm: AlgorithmInfo) -> str:
    """The part of a UID's entropy that identifies what produced the result."""
    if algorithm.model_sha256:
        return f"{algorithm.name}|{algorithm.version}|{algorithm.model_sha256}"
    return f"{algorithm.name}|{algorithm.version}"


def derive_uid(job_key: str, algorithm: AlgorithmInfo, kind: str) -> UID:
    """UID of one output object, the same for the same inputs.

    Parameters
    ----------
    job_key : str
        Stable identifier of the job's content (see
        :class:`service.pipelines.base.JobContext`).
    algorithm : AlgorithmInfo
        Identifies the software and model that produced the result.
    kind : str
        What the object is (``"sr-instance"``, ``"seg-series"``, ...); a
        pipeline chooses its kinds, which must match ``[a-z0-9]+([_-][a-z0-9]+)*``.

    Raises
    ------
    ValueError
        For an empty ``job_key`` or an unknown ``kind``.
    """
    if not job_key:
        raise ValueError("job_key must not be empty")
    if not _KIND_RE.match(kind):
        raise ValueError(f"UID kind {kind!r} is not lower-case words joined by - or _")
    return generate_uid(entropy_srcs=[job_key, algorithm_key(algorithm), kind])
