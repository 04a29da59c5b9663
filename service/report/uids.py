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

from pydicom.uid import UID, generate_uid

from service.pipelines.dat_spect.result import AlgorithmInfo

#: Object kinds with a UID of their own.
KINDS = frozenset(
    {
        "sr-series",
        "sr-instance",
        "picture-series",
        "picture-instance",
        "tracking-caudate_left",
        "tracking-caudate_right",
        "tracking-putamen_left",
        "tracking-putamen_right",
        "tracking-striatum",
    }
)

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
        :class:`service.pipelines.base.Pipeline`).
    algorithm : AlgorithmInfo
        Identifies the software and model that produced the result.
    kind : str
        One of :data:`KINDS`.

    Raises
    ------
    ValueError
        For an empty ``job_key`` or an unknown ``kind``.
    """
    if not job_key:
        raise ValueError("job_key must not be empty")
    if kind not in KINDS:
        raise ValueError(f"unknown UID kind {kind!r}; expected one of {sorted(KINDS)}")
    return generate_uid(entropy_srcs=[job_key, algorithm_key(algorithm), kind])
