"""pynetdicom's requestor race is closed for the tests (service.testing.scu).

A caller that holds the reactor checkpoint gets the answer: the requestor's
non-blocking read (the reactor's) finds nothing then; blocking reads (the
caller's) and an idle reactor's reads are unchanged. Loopback SCP, real
association.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO

from service.dicom import codes
from service.testing.polling import wait_until
from service.testing.ports import free_port
from service.testing.scu import requestors_answer_their_caller


@pytest.fixture
def association() -> Iterator[object]:
    scp_ae = AE(ae_title="ANSWERS")
    scp_ae.add_supported_context(codes.VERIFICATION)
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False)
    ae = AE(ae_title="ASKS")
    ae.add_requested_context(codes.VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="ANSWERS")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()
        server.shutdown()


def test_the_patch_is_installed_once() -> None:
    requestors_answer_their_caller()
    first = DIMSEServiceProvider.get_msg
    requestors_answer_their_caller()
    assert DIMSEServiceProvider.get_msg is first and first.answers_caller


def test_a_held_checkpoint_keeps_the_answer_for_the_caller(association: object) -> None:
    requestors_answer_their_caller()
    assoc = association
    assoc._reactor_checkpoint.clear()  # what send_c_echo does before it sends
    wait_until(lambda: assoc._is_paused, 5.0, "the reactor to pause", 0.001)
    response = C_ECHO()  # an answer (not a request: an idle reactor logs and drops it)
    response.MessageIDBeingRespondedTo = 1
    response.AffectedSOPClassUID = codes.VERIFICATION
    response.Status = 0x0000
    answer = (1, response)
    assoc.dimse.msg_queue.put(answer)
    assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's read: nothing
    assert assoc.dimse.get_msg(block=True) == answer  # the caller's
    assoc.dimse.msg_queue.put(answer)
    assoc._reactor_checkpoint.set()  # idle again: the reactor serves what comes
    wait_until(lambda: assoc.dimse.msg_queue.empty(), 5.0, "the reactor to read", 0.001)
    assert assoc.send_c_echo().Status == 0x0000  # and pynetdicom's own call still works
