"""The node side of a fuzz run: a reusable C-STORE sender and probes of the node.

:class:`Sender` delivers :class:`~service.testing.fuzz.DatasetCase` inputs on
one pynetdicom association and checks liveness with C-ECHO;
:func:`proc_stats`, :func:`files_outside_spool` and :func:`traversal_files`
measure what the inputs did to the process and the disk.
:data:`NODE_SETTINGS` are the node settings a fuzz run starts the node with.
"""

from __future__ import annotations

import os
from contextlib import suppress
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from service.dicom import codes
from service.testing.fuzz import TRAVERSAL_MARKER, DatasetCase
from service.testing.scu import reactor_paused, requestors_answer_their_caller


def proc_stats(pid: int) -> dict[str, int]:
    """Threads, open descriptors (``sockets`` of them) and RSS (kB) of a process, from /proc."""
    out = {"threads": -1, "fds": -1, "sockets": -1, "rss_kb": -1}
    with suppress(OSError):
        out["threads"] = len(list(Path(f"/proc/{pid}/task").iterdir()))
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
        out["fds"] = len(fds)
        out["sockets"] = sum(1 for fd in fds if _readlink(fd).startswith("socket:"))
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
    return out


def _readlink(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:  # closed since the listing
        return ""


#: Node settings for fuzzing: short edge timeouts, so that a half-sent PDU costs
#: seconds, and a connection left open after them is a finding.
NODE_SETTINGS: dict[str, Any] = {"node": {"artim_timeout_s": 2.0, "receive_timeout_s": 3.0,
                                          "network_timeout_s": 8.0}}


class Sender:
    """One pynetdicom association reused for many C-STOREs (reopened after an abort)."""

    CLASSES = [codes.NM_IMAGE_STORAGE, codes.PET_IMAGE_STORAGE, codes.COMPREHENSIVE_SR_STORAGE,
               codes.CT_IMAGE_STORAGE]

    def __init__(self, port: int, called: str, timeout_s: float = 20.0) -> None:
        from pynetdicom import AE

        requestors_answer_their_caller()  # bench/fuzz.py too: an echo lost to the race is no finding
        self.port, self.called = port, called
        self.ae = AE(ae_title="STORESCU")
        self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self.ae.acse_timeout = timeout_s
        self.ae.add_requested_context(codes.VERIFICATION)
        for sop_class in self.CLASSES:
            self.ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        self.assoc: Any = None

    def _open(self) -> bool:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title=self.called)
        return bool(self.assoc.is_established)

    def store(self, case: DatasetCase) -> str:
        from pynetdicom.dimse_primitives import C_STORE

        if not self._open():
            return "assoc_rejected"
        cx = next((c.context_id for c in self.assoc.accepted_contexts
                   if c.abstract_syntax == case.context_class), None)
        if cx is None:
            return "no_context"
        req = C_STORE()
        req.MessageID = case.index % 65535 + 1
        req.Priority = 2
        try:
            req.AffectedSOPClassUID = case.sop_class or "1.2"
            req.AffectedSOPInstanceUID = case.sop_instance or "1.2"
        except ValueError:
            return "scu_refused_command"  # pynetdicom will not encode it (UID > 64 chars)
        req.DataSet = BytesIO(case.data)
        assoc = self.assoc
        try:
            with reactor_paused(assoc):
                assoc.dimse.send_msg(req, cx)
                _, rsp = assoc.dimse.get_msg(block=True)
        except Exception as exc:  # noqa: BLE001 - an encoder error is an outcome too
            return f"send_error_{type(exc).__name__}"
        if rsp is None:
            if assoc.is_aborted or not assoc.is_alive():
                self.assoc = None
                return "abort"
            self.assoc.abort()
            self.assoc = None
            return "no_answer"
        return f"0x{int(rsp.Status):04X}"

    def echo(self) -> str:
        """One C-ECHO on a new association: ``"ok"`` or what went wrong
        (``"not_established"``, ``"aborted"``, ``"status_0x...``, ``"no_response"``)."""
        from pynetdicom import AE

        ae = AE(ae_title="ECHOSCU")
        ae.acse_timeout = ae.dimse_timeout = 10
        ae.add_requested_context(codes.VERIFICATION)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called)
        if assoc.is_rejected:
            return "rejected"
        if not assoc.is_established:
            return "aborted" if assoc.is_aborted else "not_established"
        status = assoc.send_c_echo()
        assoc.release()
        if not status:
            return "no_response"
        return "ok" if int(status.Status) == 0 else f"status_0x{int(status.Status):04X}"

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


def files_outside_spool(root: Path, spool: Path, allowed: set[Path]) -> list[str]:
    """New files under ``root`` that are neither in ``spool`` nor ``allowed`` (db, log...)."""
    out = []
    for path in root.rglob("*"):
        if not path.is_file() or path in allowed or spool in path.parents:
            continue
        if path.name.startswith(("dopanode.sqlite3", "node.log", "dopanode.toml", "audit")):
            continue
        if "audit" in path.parts or "seeds" in path.parts or "storescp" in path.parts:
            continue
        out.append(str(path))
    return out


def traversal_files(deep: Path, *shallow: Path) -> list[str]:
    """Files or folders named after :data:`TRAVERSAL_MARKER`: under ``deep``, or in ``shallow``."""
    found: list[str] = []
    with suppress(OSError):
        found += [str(p) for p in deep.rglob(f"*{TRAVERSAL_MARKER}*")]
    for root in shallow:
        with suppress(OSError):
            found += [str(p) for p in root.glob(f"*{TRAVERSAL_MARKER}*")]
    return found
