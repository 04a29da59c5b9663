"""A storage SCP on loopback for sender tests: records what it stores, may hold its answer.

``hold()`` makes the next C-STOREs wait (the object is already "stored", the
response not yet sent) until ``release()``: the window in which a sender that
dies leaves the destination with the object and itself without the answer
(reliability audit D12).
"""

from __future__ import annotations

import threading
from typing import Any, cast

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.testing.ports import free_port


class HoldingDestination:
    """pynetdicom storage SCP (every storage class, uncompressed syntaxes) on a free port.

    Attributes
    ----------
    received : list of str
        SOP Instance UIDs in the order their C-STOREs arrived (twins included).
    stored : threading.Event
        Set when a C-STORE arrived (after it was recorded).
    on_store : callable or None
        Called in the handler after recording, before the (held) answer.
    """

    def __init__(self, ae_title: str = "PACS") -> None:
        self.received: list[str] = []
        self.stored = threading.Event()
        self._answer = threading.Event()
        self._answer.set()
        self.on_store: Any = None
        self.ae_title = ae_title
        self.port = free_port()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server: Any = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._handle_store)])

    def _handle_store(self, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        self.received.append(str(request.AffectedSOPInstanceUID))
        if self.on_store is not None:
            self.on_store()
        self.stored.set()
        self._answer.wait(60)
        return 0x0000

    def hold(self) -> None:
        """Answer the next C-STOREs only after :meth:`release` (they are recorded at once)."""
        self._answer.clear()

    def release(self) -> None:
        self._answer.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
