"""service.testing.ports: side-by-side test processes never share a free port.

* Outside pytest-xdist and ``make test``'s passes: one slot, any free port.
* Worker ``k`` of ``n`` in pass ``p`` of ``m`` has slot ``p * n + k`` of ``m * n``:
  every (pass, worker) pair gets its own slot.
* ``free_port`` returns a port of the process's slot that a listener can bind.
"""

from __future__ import annotations

import socket

import pytest

from service.testing import ports
from service.testing.ports import port_slot

pytestmark = pytest.mark.no_storage

_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
              "DOPANODE_TEST_PORT_PASS", "DOPANODE_TEST_PORT_PASSES")


def test_one_slot_outside_the_test_runners() -> None:
    assert port_slot({}) == (0, 1)
    assert port_slot({"PYTEST_XDIST_WORKER": "master"}) == (0, 1)


def test_every_pass_and_worker_has_its_own_slot() -> None:
    seen = set()
    for this_pass in range(2):
        for worker in range(3):
            slot = port_slot({"PYTEST_XDIST_WORKER": f"gw{worker}",
                              "PYTEST_XDIST_WORKER_COUNT": "3",
                              "DOPANODE_TEST_PORT_PASS": str(this_pass),
                              "DOPANODE_TEST_PORT_PASSES": "2"})
            assert slot[1] == 6
            seen.add(slot[0])
    assert seen == set(range(6))


@pytest.mark.parametrize("worker", ["gw0", "gw2"])
def test_free_port_is_of_the_slot_and_bindable(worker: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setenv("DOPANODE_TEST_PORT_PASS", "1")
    monkeypatch.setenv("DOPANODE_TEST_PORT_PASSES", "2")
    slot, slots = ports.port_slot()
    for _ in range(20):
        port = ports.free_port()
        assert (port >> 1) % slots == slot
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
            s.listen()
            assert ports.tcp_open(port)


def test_a_port_is_not_handed_out_twice_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two calls before anything binds (an Orthanc's HTTP and DICOM ports) once got the
    same port from the kernel; a port handed out lately is skipped."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    kernel = iter([40001, 40001, 40001, 40003])

    class FakeSocket:
        def __init__(self, *args: object) -> None:
            self.port = 0

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *args: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(kernel)

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(ports, "_RECENT", type(ports._RECENT)(maxlen=8))
    monkeypatch.setattr(ports.socket, "socket", FakeSocket)
    assert [ports.free_port(), ports.free_port()] == [40001, 40003]
