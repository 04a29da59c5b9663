"""The audit trail reaches an audit record repository over syslog TLS (deploy/rsyslog).

A real ``dopanode serve`` writes its audit trail (rotated every few records);
a real rsyslog runs the shipped ``deploy/rsyslog/dopanode-audit.conf`` with
only its site values replaced; a second rsyslog is the audit record
repository (ARR): TLS on loopback, client certificates required, each
message's text written to a file. Every record of the trail arrives, in
order, across rotations, a restart of the sender and an outage of the ARR:
at least once (rsyslog repeats a few records around a rotation, never more
than twice here); a sender pointed at an ARR whose certificate its CA did not sign sends
nothing. What the ARR received is then the check of the trail's hash chain
(``dopanode audit verify --against``): a trail rewritten with a new chain, or
cut at its end, passes the chain alone but not the comparison.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.audit_verify import trail_files
from service.testing import certs
from service.testing.audit_tamper import rechained
from service.testing.node import NodeProcess
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port

pytestmark = pytest.mark.slow  # a node and two rsyslog daemons

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "rsyslog" / "dopanode-audit.conf"
#: The shipped file's site values, as the test replaces them.
SITE_VALUES = ("/var/spool/rsyslog", "/etc/dopanode/tls/arr-ca.pem",
               "/etc/dopanode/tls/audit-client.pem", "/etc/dopanode/tls/audit-client.key",
               "/var/lib/dopanode/var/audit/audit*.jsonl", 'target="arr.hospital.example"',
               'port="6514"', 'StreamDriverPermittedPeers="arr.hospital.example"')


def sender_config(work: Path, ca: certs.Pair, client: certs.Pair, audit: Path,
                  port: int) -> Path:
    """The shipped configuration with this test's paths, ARR and certificates."""
    text = DEPLOY.read_text(encoding="utf-8")
    values = (str(work), str(ca.cert), str(client.cert), str(client.key),
              str(audit.with_name(audit.stem + "*" + audit.suffix)),
              'target="127.0.0.1"', f'port="{port}"', 'StreamDriverPermittedPeers="localhost"')
    for site, here in zip(SITE_VALUES, values, strict=True):
        assert text.count(site) == 1, site  # the file still has each site value once
        text = text.replace(site, here)
    path = work / "sender.conf"
    path.write_text(text, encoding="utf-8")
    return path


def arr_config(work: Path, ca: certs.Pair, server: certs.Pair, port: int, out: Path) -> Path:
    """An ARR: syslog over TLS (RFC 5425), client certificates required, messages to a file."""
    path = work / "arr.conf"
    path.write_text(f"""
global(workDirectory="{work}" maxMessageSize="256k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{ca.cert}"
       DefaultNetstreamDriverCertFile="{server.cert}"
       DefaultNetstreamDriverKeyFile="{server.key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="arr")
template(name="text" type="string" string="%msg%\\n")
ruleset(name="arr") {{ action(type="omfile" file="{out}" template="text") }}
""", encoding="utf-8")
    return path


@contextmanager
def rsyslog(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``rsyslogd`` in the foreground with ``config``; stopped (SIGTERM) on leaving."""
    work = config.parent
    check = subprocess.run([require_tool("rsyslogd"), "-N1", "-f", str(config)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    with (work / f"{config.stem}.log").open("ab") as log:
        process = subprocess.Popen([require_tool("rsyslogd"), "-n", "-f", str(config),
                                    "-i", str(work / f"{config.stem}.pid")],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def trail(audit: Path) -> list[str]:
    """Every line of the node's trail, the rotated files too, in the node's order."""
    lines = [line for path in audit.parent.glob("audit*.jsonl")
             for line in path.read_text("ascii").splitlines()]
    return sorted(lines, key=lambda line: json.loads(line)["source"]["seq"])


def received(out: Path) -> list[str]:
    return out.read_text("utf-8").splitlines() if out.exists() else []


def once(lines: list[str]) -> list[str]:
    """``lines`` without repeats, in the order of their first arrival."""
    return list(dict.fromkeys(lines))


def echo(node: NodeProcess, times: int) -> None:
    for _ in range(times):  # each association is an audit record
        done = subprocess.run([require_tool("echoscu"), "-aet", "ECHOSCU", "-aec",
                               node.ae_title, "127.0.0.1", str(node.scp_port)],
                              capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr


def assert_at_least_once(got: list[str], written: list[str]) -> None:
    """Every record arrived, in the trail's order of first arrival, none more than twice.

    rsyslog's imfile sends a few records again around a rotation of the trail, and
    the record in flight when the ARR goes away may come twice; a record's
    ``source`` (node_id, pid, seq) tells a repeat from a new record.
    """
    assert once(got) == written
    assert max(got.count(line) for line in set(got)) <= 2


def all_arrived(out: Path, audit: Path) -> bool:
    return len(once(received(out))) >= len(trail(audit))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, certs.Pair]:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca(root, "ca", "CN=Audit CA,O=Hospital")
    rogue = certs.make_ca(root, "rogue", "CN=Rogue CA")
    return {"ca": ca, "rogue": rogue,
            "arr": certs.make_leaf(root, ca, "arr", "CN=arr,O=Hospital"),
            "client": certs.make_leaf(root, ca, "client", "CN=dopanode-audit,O=Hospital"),
            "impostor": certs.make_leaf(root, rogue, "impostor", "CN=arr,O=Hospital")}


def arr_and_sender_folders(tmp_path: Path) -> tuple[int, Path]:
    """A port for the ARR and the file it writes; its folder and the sender's made."""
    (tmp_path / "arr").mkdir()
    (tmp_path / "sender").mkdir()
    return free_port(), tmp_path / "arr" / "received.jsonl"


def test_every_record_reaches_the_arr_in_order_at_least_once(
        tmp_path: Path, pki: dict[str, certs.Pair]) -> None:
    port, out = arr_and_sender_folders(tmp_path)
    arr = arr_config(tmp_path / "arr", pki["ca"], pki["arr"], port, out)
    with NodeProcess(tmp_path / "node", settings={"audit": {"rotate_mb": 0.002}}) as node:
        node.start()
        sender = sender_config(tmp_path / "sender", pki["ca"], pki["client"], node.audit_path,
                               port)
        with rsyslog(arr), rsyslog(sender):
            echo(node, 6)
            wait_until(lambda: all_arrived(out, node.audit_path), 60, "the records at the ARR")
        assert len(list(node.audit_path.parent.glob("audit-*.jsonl"))) >= 2  # rotated
        assert_at_least_once(received(out), trail(node.audit_path))

        with rsyslog(arr):
            echo(node, 3)  # the sender is down: it reads them when it starts again
            with rsyslog(sender):
                wait_until(lambda: all_arrived(out, node.audit_path), 60, "after a restart")
        assert_at_least_once(received(out), trail(node.audit_path))

        with rsyslog(sender):
            echo(node, 3)  # the ARR is down: they wait in the sender's queue
            with rsyslog(arr):
                wait_until(lambda: all_arrived(out, node.audit_path), 90, "after the outage")
        assert_at_least_once(received(out), trail(node.audit_path))
        records = [json.loads(line) for line in received(out)]
        assert {"audit_started", "application_start", "association"} <= {
            r["event"] for r in records}
        assert node.stop() == 0

    # the ARR's copy checks what the chain alone cannot: a trail rewritten with a new
    # chain, or cut at its end (the records after the last delivery: not there yet)
    assert verify_against(node.audit_path, out) == (0, 0)
    files = trail_files(node.audit_path)
    kept = {f: f.read_text("ascii").splitlines(keepends=True) for f in files}
    new = iter(rechained([line for f in files for line in kept[f]], ("ECHOSCU", "NOBODY")))
    for f in files:  # the whole trail rewritten, file by file, with a new chain
        f.write_text("".join(next(new) for _ in kept[f]), "ascii")
    assert verify_against(node.audit_path, None)[0] == 0
    rewritten = verify_against(node.audit_path, out)
    assert rewritten[0] == 1 and rewritten[1] >= 12  # the 12 associations at least
    at_arr = set(received(out))
    for f in files:  # the trail as it was, cut before its newest record the ARR holds
        f.write_text("".join(kept[f]), "ascii")
    last = max((k, j) for k, f in enumerate(files) for j, line in enumerate(kept[f])
               if line.rstrip("\n") in at_arr)
    files[last[0]].write_text("".join(kept[files[last[0]]][:last[1]]), "ascii")
    for f in files[last[0] + 1:]:
        f.unlink()
    assert verify_against(node.audit_path, None)[0] == 0
    assert verify_against(node.audit_path, out)[0] == 1


def verify_against(audit: Path, arr_copy: Path | None) -> tuple[int, int]:
    """``dopanode audit verify`` (with ``--against``): exit code and problems reported."""
    extra = ["--against", str(arr_copy)] if arr_copy else []
    done = subprocess.run([sys.executable, "-m", "service.cli", "audit", "verify", "--path",
                           str(audit), *extra], capture_output=True, text=True, timeout=120,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    problems = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    return done.returncode, len(problems)


def test_a_sender_refuses_an_arr_its_ca_did_not_sign(tmp_path: Path,
                                                     pki: dict[str, certs.Pair]) -> None:
    port, out = arr_and_sender_folders(tmp_path)
    audit = tmp_path / "audit" / "audit.jsonl"
    audit.parent.mkdir()
    audit.write_text('{"event": "x", "source": {"seq": 1}}\n', encoding="ascii")
    # the impostor trusts our client (its CA file is ours), but its own certificate is
    # signed by a CA the sender does not know
    impostor = arr_config(tmp_path / "arr", pki["ca"], pki["impostor"], port, out)
    good_out = tmp_path / "good" / "received.jsonl"
    (tmp_path / "good").mkdir()
    good_port = free_port()
    good = arr_config(tmp_path / "good", pki["ca"], pki["arr"], good_port, good_out)
    sender = sender_config(tmp_path / "sender", pki["ca"], pki["client"], audit, port)
    control = tmp_path / "control"
    control.mkdir()
    control_sender = sender_config(control, pki["ca"], pki["client"], audit, good_port)
    with rsyslog(impostor), rsyslog(sender), rsyslog(good), rsyslog(control_sender):
        # the same record through the same configuration reaches the real ARR...
        wait_until(lambda: received(good_out) != [], 60, "the record at the real ARR")
        wait_until(lambda: "x509" in (tmp_path / "sender" / "sender.log").read_text()
                   or "certificate" in (tmp_path / "sender" / "sender.log").read_text(),
                   60, "the sender to refuse the impostor")
    assert received(out) == []  # ... and never the impostor
