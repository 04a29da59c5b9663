"""DICOM TLS (PS3.15 B.1, BCP 195) against real peers: DCMTK both ways, a real node.

The node's TLS port with mutual TLS (client certificates from one CA, the
calling AE tied to a certificate subject) and with server-only TLS, both
acceptors; refusals (a plain client, no client certificate, a certificate
from another CA, the wrong subject) must leave the port serving; the
certificate is renewed on disk and the next connection sees it; the sender
delivers to ``storescp +tls``. Certificates: :mod:`service.testing.certs`.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.net.scu import Sender
from service.store import outbox
from service.store.outbox import RetryPolicy
from service.testing import certs
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess, fake_settings, to_toml
from service.testing.orthanc import OrthancPeer
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open
from service.testing.samples import write_sr
from service.testing.storage import node_rows

pytestmark = pytest.mark.slow  # real nodes and DCMTK peers

PACS_SUBJECT = "CN=PACS,O=Hospital"


@dataclass(frozen=True)
class Pki:
    ca: certs.Pair
    server: certs.Pair
    client: certs.Pair       # CN=PACS,O=Hospital
    other_client: certs.Pair  # same CA, another subject
    rogue: certs.Pair        # another CA
    renewed: certs.Pair      # the server's next certificate (same CA)
    rogue_ca: certs.Pair


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca(root, "ca", "CN=Test CA,O=Hospital")
    rogue_ca = certs.make_ca(root, "rogue-ca", "CN=Rogue CA")
    return Pki(ca=ca, rogue_ca=rogue_ca,
               server=certs.make_leaf(root, ca, "server", "CN=dopanode,O=Hospital"),
               client=certs.make_leaf(root, ca, "client", PACS_SUBJECT),
               other_client=certs.make_leaf(root, ca, "other", "CN=Other,O=Hospital"),
               rogue=certs.make_leaf(root, rogue_ca, "rogue", PACS_SUBJECT),
               renewed=certs.make_leaf(root, ca, "renewed", "CN=dopanode-renewed,O=Hospital"))


def tls_node(tmp: Path, pki: Pki, mutual: bool, acceptor: str = "event",
             server: certs.Pair | None = None) -> NodeProcess:
    server = server or pki.server
    tls: dict[str, object] = {"port": free_port(), "cert_file": str(server.cert),
                              "key_file": str(server.key)}
    callers = [{"ae_title": ae, "host": "127.0.0.1", "series_quiet_s": 1.0}
               for ae in ("STORESCU", "ECHOSCU")]
    if mutual:
        tls.update(ca_file=str(pki.ca.cert), require_client_cert=True)
        callers.append({"ae_title": "PACS", "host": "127.0.0.1", "tls_subject": PACS_SUBJECT})
    node = NodeProcess(tmp, {**fake_settings(), "node": {"acceptor": acceptor, "tls": tls},
                             "allowed_callers": callers})
    node.tls_port = tls["port"]  # type: ignore[attr-defined]
    return node


def dcmtk(tool: str, node: NodeProcess, *flags: str, aet: str = "ECHOSCU",
          tls_port: bool = True) -> subprocess.CompletedProcess[str]:
    port = node.tls_port if tls_port else node.scp_port  # type: ignore[attr-defined]
    cmd = [require_tool(tool), "-to", "10", "-ta", "10", "-td", "10", *flags, "-aet", aet,
           "-aec", node.ae_title, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def with_cert(pair: certs.Pair, ca: certs.Pair) -> list[str]:
    return ["+tls", str(pair.key), str(pair.cert), "+cf", str(ca.cert)]


@pytest.fixture(scope="module")
def mutual_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeProcess]:
    with tls_node(tmp_path_factory.mktemp("mtls"), pki, mutual=True).start() as node:
        yield node


def test_echoscu_and_storescu_with_client_certificates(mutual_node, pki, tmp_path):
    """Mutual TLS: C-ECHO and C-STORE over the TLS port; the audit trail has the subject."""
    echo = dcmtk("echoscu", mutual_node, *with_cert(pki.client, pki.ca), aet="PACS")
    assert echo.returncode == 0, echo.stderr
    sr = tmp_path / "sr.dcm"
    ds = write_sr(sr)
    store = dcmtk("storescu", mutual_node, *with_cert(pki.client, pki.ca), aet="PACS")
    store = subprocess.run([*store.args, str(sr)], capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    assert any(key.endswith(f"/{ds.SOPInstanceUID}.dcm") for key in mutual_node.stored_keys())
    subjects = {p.get("tls_subject") for r in mutual_node.audit_records()
                for p in r.get("participants", ())}
    assert any(s and "PACS" in s and "Hospital" in s for s in subjects), subjects


@pytest.mark.parametrize("case", ["plain", "no_cert", "other_ca", "wrong_subject"])
def test_refused_cleanly_and_the_port_keeps_serving(mutual_node, pki, case):
    """Each refusal ends the connection at once; a good client is served right after."""
    flags = {"plain": [], "no_cert": ["+tla", "+cf", str(pki.ca.cert)],
             "other_ca": with_cert(pki.rogue, pki.ca),
             "wrong_subject": with_cert(pki.other_client, pki.ca)}[case]
    started = time.monotonic()
    bad = dcmtk("echoscu", mutual_node, *flags, aet="PACS")
    assert bad.returncode != 0
    assert time.monotonic() - started < 10, "refusal waited for a timeout"
    if case == "wrong_subject":  # TLS fine, the association is rejected
        assert "Rejected" in bad.stderr or "rejected" in bad.stderr.lower(), bad.stderr
    good = dcmtk("echoscu", mutual_node, *with_cert(pki.client, pki.ca), aet="PACS")
    assert good.returncode == 0, good.stderr
    plain = dcmtk("echoscu", mutual_node, tls_port=False)  # the plain port is untouched
    assert plain.returncode == 0, plain.stderr
    if case != "wrong_subject":  # refused at the handshake: an authentication failure
        texts = [r.get("outcome_text") or "" for r in mutual_node.audit_records()]
        assert any(t.startswith("tls_handshake: ") for t in texts), texts[-5:]


def test_silent_connection_does_not_block_the_tls_port(mutual_node, pki):
    """A peer that connects and sends nothing holds only its own thread."""
    with socket.create_connection(("127.0.0.1", mutual_node.tls_port)):
        good = dcmtk("echoscu", mutual_node, *with_cert(pki.client, pki.ca), aet="PACS")
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("acceptor", ["event", "pynetdicom"])
def test_server_only_tls_with_either_acceptor(tmp_path, pki, acceptor):
    """Without ca_file no client certificate is asked; storescu sends several files."""
    files = [tmp_path / f"{i}.dcm" for i in range(3)]
    uids = {str(write_sr(f).SOPInstanceUID) for f in files}
    with tls_node(tmp_path / "node", pki, mutual=False, acceptor=acceptor).start() as node:
        anon = ["+tla", "+cf", str(pki.ca.cert)]
        echo = dcmtk("echoscu", node, *anon)
        assert echo.returncode == 0, echo.stderr
        store = dcmtk("storescu", node, *anon, aet="STORESCU")
        store = subprocess.run([*store.args, *map(str, files)], capture_output=True,
                               text=True, timeout=60)
        assert store.returncode == 0, store.stderr
        assert node.audit_records()  # and the instances are stored (spool or bucket):
        stored = {key.rsplit("/", 1)[-1].removesuffix(".dcm") for key in node.stored_keys()}
        assert uids <= stored, stored


def peer_subject(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        cert = sock.getpeercert()
    return ",".join(f"{k}={v}" for rdn in cert["subject"] for k, v in rdn)


def test_certificate_renewed_on_disk_is_used_without_restart(tmp_path, pki):
    live = certs.Pair(tmp_path / "live.pem", tmp_path / "live.key")
    live.cert.write_bytes(pki.server.cert.read_bytes())
    live.key.write_bytes(pki.server.key.read_bytes())
    with tls_node(tmp_path / "node", pki, mutual=False, server=live).start() as node:
        assert "CN=dopanode," in peer_subject(node.tls_port, pki.ca.cert) \
            or "commonName=dopanode," in peer_subject(node.tls_port, pki.ca.cert)
        pid = node.proc.pid
        for src, dst in ((pki.renewed.key, live.key), (pki.renewed.cert, live.cert)):
            tmp = dst.with_suffix(".new")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)
            later = time.time() + 2  # a new mtime even on a coarse clock
            os.utime(dst, (later, later))
        assert "dopanode-renewed" in peer_subject(node.tls_port, pki.ca.cert)
        echo = dcmtk("echoscu", node, "+tla", "+cf", str(pki.ca.cert))
        assert echo.returncode == 0, echo.stderr
        assert node.proc.pid == pid
        assert "tls_reloaded" in node.log_text()


def test_sighup_reloads_files_replaced_with_their_old_mtime(tmp_path, pki):
    """``cp -p`` of a renewed pair keeps the mtimes: only SIGHUP makes the node read it."""
    import signal

    live = certs.Pair(tmp_path / "live.pem", tmp_path / "live.key")
    live.cert.write_bytes(pki.server.cert.read_bytes())
    live.key.write_bytes(pki.server.key.read_bytes())
    with tls_node(tmp_path / "node", pki, mutual=False, server=live).start() as node:
        stamps = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (live.cert, live.key)}
        live.key.write_bytes(pki.renewed.key.read_bytes())
        live.cert.write_bytes(pki.renewed.cert.read_bytes())
        for path, (atime, mtime) in stamps.items():
            os.utime(path, ns=(atime, mtime))
        assert "dopanode-renewed" not in peer_subject(node.tls_port, pki.ca.cert)
        pid = node.proc.pid
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "tls_reload_requested" in node.log_text(), 10, "the reload")
        assert "dopanode-renewed" in peer_subject(node.tls_port, pki.ca.cert)
        echo = dcmtk("echoscu", node, "+tla", "+cf", str(pki.ca.cert))
        assert echo.returncode == 0, echo.stderr
        assert node.proc.pid == pid and node.proc.poll() is None
        assert 'tls_reload_requested scp="reloaded"' in node.log_text()


class Dest:
    def __init__(self, port: int, pki: Pki, ca: Path) -> None:
        self.name, self.ae_title, self.host, self.port = "pacs", "DEST", "127.0.0.1", port
        self.tls, self.ca_file, self.server_hostname = True, ca, "localhost"
        self.cert_file, self.key_file = pki.client.cert, pki.client.key


@pytest.fixture
def storescp_tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    port, inbox = free_port(), tmp_path / "in"
    inbox.mkdir()
    proc = subprocess.Popen(
        [require_tool("storescp"), "+tls", str(pki.server.key), str(pki.server.cert),
         "+cf", str(pki.ca.cert), "-aet", "DEST", "-od", str(inbox), "+uf", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: tcp_open(port), what="storescp +tls to listen")
        yield port, inbox
    finally:
        proc.terminate()
        proc.wait(10)


def test_sender_delivers_to_storescp_over_tls(tmp_path, pki, storescp_tls):
    port, inbox = storescp_tls
    db = node_rows(tmp_path / "node.sqlite3")
    db.migrate()
    path = tmp_path / "out" / "sr.dcm"
    ds = write_sr(path)
    conn = db.connect()
    with conn:
        outbox.enqueue(conn, 1, ["pacs"], path, ds.SOPClassUID, ds.SOPInstanceUID)
    conn.close()
    policy = RetryPolicy(base_s=0.2, cap_s=0.8, give_up_after_s=3600)
    wrong = Sender(db, [Dest(port, pki, pki.rogue_ca.cert)], "DOPANODE", policy)
    report = wrong.send_due("pacs")  # the server's chain is not trusted: retried
    assert (report.sent, report.retried) == (0, 1)
    assert not list(inbox.iterdir())
    conn = db.connect()
    with conn:
        conn.execute("UPDATE outbox SET next_attempt_at = 0")
    conn.close()
    report = Sender(db, [Dest(port, pki, pki.ca.cert)], "DOPANODE", policy).send_due("pacs")
    assert report.sent == 1
    assert len(list(inbox.iterdir())) == 1


def test_orthanc_pushes_over_tls_and_gets_the_result_over_tls(tmp_path, pki):
    """Orthanc 1.10 with DicomTlsEnabled: C-STORE to the node's TLS port (mutual TLS,
    ORTHANC tied to its certificate subject), the node's result back to Orthanc's
    TLS-only DICOM port with the node's client certificate."""
    orthanc_pair = certs.make_leaf(tmp_path / "pki", pki.ca, "orthanc", "CN=Orthanc,O=Hospital")
    pacs = OrthancPeer(tmp_path / "orthanc")
    pacs.extra_config.update({
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(orthanc_pair.cert),
        "DicomTlsPrivateKey": str(orthanc_pair.key),
        "DicomTlsTrustedCertificates": str(pki.ca.cert),
        "DicomTlsRemoteCertificateRequired": True})
    node = tls_node(tmp_path / "node", pki, mutual=True)
    settings = tomllib.loads(node.config_path.read_text(encoding="utf-8"))
    settings["allowed_callers"].append({"ae_title": "ORTHANC", "host": "127.0.0.1",
                                        "tls_subject": "CN=Orthanc,O=Hospital",
                                        "series_quiet_s": 1.0})
    settings["destinations"] = [{
        "name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1",
        "port": pacs.dicom_port, "tls": True, "ca_file": str(pki.ca.cert),
        "cert_file": str(pki.client.cert), "key_file": str(pki.client.key),
        "server_hostname": "localhost"}]
    node.config_path.write_text(to_toml(settings), encoding="utf-8")
    pacs.extra_config["DicomModalities"] = {"dopanode": {
        "AET": node.ae_title, "Host": "127.0.0.1", "Port": node.tls_port,  # type: ignore[attr-defined]
        "UseDicomTls": True}}
    paths = write_marker_study(tmp_path / "study", "multiframe",
                               image=marker_image((32, 32, 8)), uid_seed="tls-orthanc")
    with node, pacs:
        node.start()
        instance_id = pacs.upload(paths[0].read_bytes())
        study_id = pacs.get(f"/instances/{instance_id}/study")["ID"]
        pacs.post("/modalities/dopanode/store", json={"Resources": [instance_id],
                                                      "Synchronous": True})
        wait_until(lambda: len(pacs.get(f"/studies/{study_id}/series")) >= 2, 120,
                   "the node's result in Orthanc")
        node.wait_for("SELECT COUNT(*) >= 1 FROM outbox WHERE state = 'sent'", [(1,)])
        subjects = {p.get("tls_subject") for r in node.audit_records()
                    for p in r.get("participants", ())}
        assert any(s and "Orthanc" in s for s in subjects), subjects


def test_tls_port_instead_of_the_plain_one(tmp_path, pki):
    """``node.plain = false``: only the TLS port listens (start() waits for scp_port: the TLS one)."""
    node = NodeProcess(tmp_path / "node", fake_settings())
    plain_port = free_port()
    settings = tomllib.loads(node.config_path.read_text(encoding="utf-8"))
    settings["node"].update(port=plain_port, plain=False, tls={
        "port": node.scp_port, "cert_file": str(pki.server.cert), "key_file": str(pki.server.key)})
    node.config_path.write_text(to_toml(settings), encoding="utf-8")
    node.tls_port = node.scp_port  # type: ignore[attr-defined]
    with node.start():
        assert not tcp_open(plain_port)
        echo = dcmtk("echoscu", node, "+tla", "+cf", str(pki.ca.cert))
        assert echo.returncode == 0, echo.stderr
