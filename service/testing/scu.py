"""C-STOREs from a test to a listener on loopback (pynetdicom as the caller)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from service.dicom import codes


def store_nm_file(port: int, path: Path, called_ae: str = "DOPANODE") -> Dataset:
    """Send the NM file ``path`` in one association; return the C-STORE response.

    Raises
    ------
    AssertionError
        When the association is not established.
    """
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(codes.NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        return assoc.send_c_store(pydicom.dcmread(path))
    finally:
        assoc.release()


def requestors_answer_their_caller() -> None:
    """Close pynetdicom's requestor race for every association of this process (tests).

    pynetdicom's ``send_c_*`` clear the reactor checkpoint and then trust
    ``_is_paused``, which the reactor sets on every turn, also right before
    it goes on: so the reactor can still make one non-blocking read and take
    the answer the caller waits for ("Received unexpected C-ECHO service
    message", then a DIMSE timeout and an abort). Measured on this machine
    with three busy cores: 3-7 of 300 C-ECHOs right after a hand-built
    message (:func:`reactor_paused`), 1 of 300 consecutive ``send_c_echo``
    calls (CI 2026-12-05 failed on one); with this, 0 of 1200. After this,
    a requestor's non-blocking read finds nothing while a caller holds the
    checkpoint (the caller's own reads block), so the answer goes to the
    caller; an idle reactor still serves what a peer sends. Idempotent;
    acceptors are unchanged. The node's own sender does not need it: its
    C-STOREs read a file before they send, which outlasts the window (0 of
    1000 lost against a peer that answers at once, without this).
    """
    from pynetdicom.dimse import DIMSEServiceProvider

    original = DIMSEServiceProvider.get_msg
    if getattr(original, "answers_caller", False):
        return

    def get_msg(self: Any, block: bool = False) -> Any:
        assoc = self.assoc
        if not block and assoc.is_requestor and not assoc._reactor_checkpoint.is_set():
            return None, None
        return original(self, block)

    get_msg.answers_caller = True  # type: ignore[attr-defined]
    DIMSEServiceProvider.get_msg = get_msg  # type: ignore[method-assign]


@contextmanager
def reactor_paused(assoc: Any, timeout_s: float = 5.0) -> Iterator[None]:
    """Keep the association's reactor off the DIMSE queue while the caller sends a
    hand-built message and reads its answer itself (as pynetdicom's ``send_c_*`` do).

    The reactor checkpoint alone is not enough: a reactor thread descheduled just
    past the checkpoint (a loaded machine) can still make one non-blocking read and
    swallow the answer ("Received unexpected C-STORE service message"; the caller
    then waits in vain). :func:`requestors_answer_their_caller` makes those reads
    see nothing while the checkpoint is held.
    """
    from service.testing.polling import wait_until

    requestors_answer_their_caller()
    assoc._reactor_checkpoint.clear()
    try:
        wait_until(lambda: assoc._is_paused or not assoc.is_alive(), timeout_s,
                   "the reactor to pause", 0.001)
        yield
    finally:
        assoc._reactor_checkpoint.set()


def send_echo(assoc: Any) -> Any:
    """A C-ECHO whose answer cannot be lost to the association's own reactor.

    pynetdicom's ``send_c_echo`` trusts ``_is_paused``, which its reactor sets
    on every turn, even when it is not going to stop: right after another
    message the reactor may still make one non-blocking read and swallow the
    answer ("Received unexpected C-ECHO service message"; the caller then
    waits for the DIMSE timeout). Sent through :func:`reactor_paused` instead;
    returns the response (None when none came).
    """
    from pynetdicom.dimse_primitives import C_ECHO

    req = C_ECHO()
    req.MessageID = 1
    req.AffectedSOPClassUID = codes.VERIFICATION
    cx = next(c.context_id for c in assoc.accepted_contexts
              if c.abstract_syntax == codes.VERIFICATION)
    with reactor_paused(assoc):
        assoc.dimse.send_msg(req, cx)
        _, rsp = assoc.dimse.get_msg(block=True)
    return rsp
