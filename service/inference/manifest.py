"""Model file checks: presence and SHA-256 against the expected checksum.

Used by /ready (and at start-up by the node). The expected checksum comes
from the configuration (``model.sha256``) or, when that is not set, from a
sidecar file ``<model>.sha256`` beside the model (``sha256sum`` format: the
64 hex digits, optionally followed by the file name). A configured model
whose checksum cannot be known fails: an unverified model is not served.
No configured model means "conventional scoring only" and passes.

Hashing is cached per (path, inode, size, mtime_ns), so a /ready probe costs
a ``stat`` unless the file changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelCheck:
    """Outcome of :func:`check_model`.

    Attributes
    ----------
    ok : bool
    status : str
        ``"ok"``, ``"conventional_only"`` (no model configured), ``"missing"``,
        ``"no_checksum"``, ``"bad_sidecar"`` or ``"checksum_mismatch"``.
    detail : str
        One human-readable sentence (no secrets, no patient data).
    path : str or None
    sha256 : str or None
        The file's actual SHA-256 when it was read.
    expected_sha256 : str or None
    """

    ok: bool
    status: str
    detail: str
    path: str | None = None
    sha256: str | None = None
    expected_sha256: str | None = None


#: Files whose checksums are kept (the node checks four or five model files on
#: every /ready: the DaT CNN and putamen estimator, the FDOPA U-Nets).
_CACHE_FILES = 16
_cache: dict[str, tuple[tuple[int, int, int], str]] = {}
_cache_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, lower-case hex, cached per path by (inode, size, mtime_ns)."""
    st = os.stat(path)
    name, stamp = str(path), (st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(name)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    value = _hash_file(path)
    with _cache_lock:
        _cache.pop(name, None)
        _cache[name] = (stamp, value)
        while len(_cache) > _CACHE_FILES:  # the oldest entry first
            _cache.pop(next(iter(_cache)))
    return value


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(model_path: Path) -> Path:
    """``<model>.sha256`` beside the model file."""
    return model_path.with_name(model_path.name + ".sha256")


def read_sidecar(model_path: Path) -> str | None:
    """Expected SHA-256 from the sidecar file; None when there is none.

    Raises
    ------
    ValueError
        When the sidecar exists but does not start with 64 hex digits.
    """
    path = sidecar_path(model_path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"sidecar {path.name} unreadable: {type(exc).__name__}") from exc
    first = text.split()[0] if text else ""
    if not _HEX64.match(first):
        raise ValueError(f"sidecar {path.name} does not start with a SHA-256")
    return first.lower()


def check_model(path: Path | None, expected_sha256: str | None = None) -> ModelCheck:
    """Check that the configured model is there and is the expected file.

    Parameters
    ----------
    path : Path or None
        The configured ONNX model; None means no model (conventional scoring).
    expected_sha256 : str or None
        The configured checksum; None falls back to the sidecar file.
    """
    if path is None:
        return ModelCheck(True, "conventional_only",
                          "no model configured: conventional (SBR) scoring only")
    where = str(path)
    if not Path(path).is_file():
        return ModelCheck(False, "missing", f"model file not found: {path.name}", where)
    expected = expected_sha256.lower() if expected_sha256 else None
    if expected is None:
        try:
            expected = read_sidecar(Path(path))
        except ValueError as exc:
            return ModelCheck(False, "bad_sidecar", str(exc), where)
    if expected is None:
        return ModelCheck(
            False, "no_checksum",
            f"no checksum for {path.name}: set model.sha256 or ship {sidecar_path(path).name}",
            where,
        )
    try:
        actual = sha256_file(Path(path))
    except OSError as exc:
        return ModelCheck(False, "missing", f"model file unreadable: {type(exc).__name__}", where)
    if actual != expected:
        return ModelCheck(False, "checksum_mismatch",
                          f"SHA-256 of {path.name} differs from the expected checksum",
                          where, actual, expected)
    return ModelCheck(True, "ok", f"{path.name} present, SHA-256 matches", where, actual, expected)
