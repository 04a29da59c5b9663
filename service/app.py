"""The composition root: settings -> node, the running parts of one ``dopanode serve``.

:class:`Node` composes the parts (style rule 1: one place builds and wires
everything): the SCP, the scheduler (quiet-time sweep, routing of completed
series to the enabled pipelines, retention purge; once per process that runs
workers), the workers, the sender and the API, each optional so parts can run
in separate processes against the same database and spool (``dopanode serve
--only scp`` on one, ``--only worker,sender`` on another).

The enabled pipelines come from the registry (:mod:`service.pipelines.registry`):
built-in ones and any installed through the ``dopanode.pipelines`` entry
points, each switched on or off by its ``[pipelines.<name>]`` section.

The command line (``serve``, ``config check``, ``jobs``) is
:mod:`service.node_commands`; it binds the signals. SIGTERM/SIGINT: stop
accepting associations, let running jobs finish within
``worker.shutdown_grace_s`` and give back the ones that do not, stop the
sender and the API, exit 0. SIGHUP: re-read the TLS certificates and keys
now (:meth:`Node.reload_tls`); nothing else is reloaded.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service import __version__, audit
from service.config import Settings
from service.pipelines.base import Pipeline
from service.pipelines.registry import build_enabled

log = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("scp", "worker", "sender", "api")


def compose_pipelines(settings: Settings) -> dict[str, Pipeline]:
    """The enabled pipelines, built (models loaded and checked).

    Raises
    ------
    Exception
        Whatever a pipeline's build raises (missing model, bad checksum): the
        node refuses to start rather than analyse with something else.
    """
    return build_enabled(settings.pipelines)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit; the (soft, hard) in force.

    The API, the SCP, the workers and SQLite share one process: with the
    usual soft limit of 1024 a thousand idle HTTP connections stopped DICOM
    ingest (audit D6). The hard limit is what the service manager allows
    (``LimitNOFILE`` in deploy/systemd/dopanode.service).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
            log.warning("nofile_limit_unchanged", extra={"fields": {"soft": soft, "hard": hard}})
    log.info("nofile_limit", extra={"fields": {"soft": soft, "hard": hard}})
    return soft, hard


@dataclass
class Node:
    """The running parts of one ``dopanode serve`` process.

    Parameters
    ----------
    settings : Settings
    components : tuple of str
        Subset of :data:`COMPONENTS` to run.
    pipelines : mapping of name to Pipeline
        What the scheduler routes to and the workers run (empty: every
        completed series is recorded as ignored, saying so).
    """

    settings: Settings
    components: tuple[str, ...] = COMPONENTS
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reload: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _parts: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        """Migrate the database, then start the chosen parts (SCP last but API)."""
        from service.store.blobs import open_blobs
        from service.store.rows import open_rows
        from service.store.spool import Spool

        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown component(s): {', '.join(sorted(unknown))}")
        raise_open_files_limit()
        storage = self.settings.storage
        audit.open_trail(self.settings.audit, {"ae_title": self.settings.node.ae_title})
        self.database = open_rows(storage)  # SQLite file or PostgreSQL server
        self.database.migrate()
        one_flush = None if storage.spool_sync == "auto" else False  # None: by file system
        self.spool = Spool(storage.spool_dir, one_flush=one_flush)
        self.blobs = open_blobs(storage, self.spool)  # the spool folder or an S3 bucket
        if "scp" in self.components:  # the SCP process owns the spool's tmp/ and recovery
            self.spool.clean_tmp()
            if self.blobs.kind == "local":  # on S3 the rows are the truth: nothing to recover
                self._recover_spool()
        if "sender" in self.components or "worker" in self.components:
            self._take_back_crashed_work()
        if "sender" in self.components:
            self._start_sender()
        if "worker" in self.components:
            self._start_workers()
        if "scp" in self.components:
            self._start_scp()
        if "api" in self.components:
            self._start_api()
        log.info("node_ready", extra={"fields": {
            "components": list(self.components), "pid": os.getpid(),
            "scp_port": self._parts["scp"].port if "scp" in self._parts else None,
            "api_port": self._parts["api"].port if "api" in self._parts else None}})
        audit.emit("application_start", audit.APPLICATION_ACTIVITY, audit.APPLICATION_START,
                   participants=[self._audit_application()], details=self._configuration())

    def _recover_spool(self) -> None:
        from service.store.series import recover_spool

        quiet_s = min(c.series_quiet_s for c in self.settings.allowed_callers)
        conn = self.database.connect()
        try:
            recover_spool(conn, self.spool, quiet_s)
        finally:
            conn.close()

    def _take_back_crashed_work(self) -> None:
        """Expire the job and outbox leases of this node's processes that died (kill -9).

        Their jobs restart now instead of after ``worker.lease_s``, their
        claimed outputs are sent now instead of after the sender's lease;
        processes of this node that are alive (another ``serve --only ...``)
        keep theirs.
        """
        from service.store import jobs, outbox
        from service.store.runs import NodeRun

        self.run = NodeRun(self.spool.root)
        conn = self.database.connect()
        try:
            for run_id in self.run.dead_runs():
                prefix = f"{self.run.node_id}:{run_id}:"
                taken = jobs.expire_leases(conn, prefix)
                if taken:
                    log.warning("crashed_run_jobs_taken_back", extra={"fields": {
                        "jobs": taken, "run": run_id}})
                outputs = outbox.expire_leases(conn, prefix)
                if outputs:
                    log.warning("crashed_run_outputs_taken_back", extra={"fields": {
                        "outputs": outputs, "run": run_id}})
        finally:
            conn.close()

    def _start_sender(self) -> None:
        from service.net.scu import sender_from_settings

        sender = sender_from_settings(self.settings, self.database, self.run.owner_prefix,
                                      self.blobs)
        sender.start()
        self._parts["sender"] = sender

    def _start_workers(self) -> None:
        from service.scheduler import Scheduler
        from service.worker import Worker, defer_policy_from_settings

        sender = self._parts.get("sender")
        wset = self.settings.worker
        workers = [
            Worker(self.database, self.spool, self.pipelines, self.settings.destination_names,
                   lease_s=wset.lease_s, poll_interval_s=wset.poll_interval_s,
                   owner_prefix=self.run.owner_prefix, name=f"w{i}",
                   on_outputs=sender.wake if sender is not None else None,
                   defer_policy=defer_policy_from_settings(wset), blobs=self.blobs)
            for i in range(wset.count)
        ]

        def wake_workers() -> None:
            for worker in workers:
                worker.wake.set()

        self.database.start_wakeups(self._stop, wake_workers)  # jobs made by other nodes

        scheduler = Scheduler(self.database, self.spool, self.pipelines,
                              max_attempts=wset.max_attempts, interval_s=wset.poll_interval_s,
                              retention_days=self.settings.retention_days, on_jobs=wake_workers,
                              blobs=self.blobs,
                              orphan_grace_s=self.settings.storage.orphan_grace_h * 3600.0 or None)
        self._parts["scheduler"] = scheduler
        self._housekeeping = threading.Thread(target=scheduler.run, args=(self._stop,),
                                              name="scheduler", daemon=True)
        self._housekeeping.start()
        for i, worker in enumerate(workers):
            thread = threading.Thread(target=worker.run, args=(self._stop,),
                                      name=f"worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_scp(self) -> None:
        from service.net.scp import StorageSCP

        scheduler = self._parts.get("scheduler")
        scp = StorageSCP(self.settings, self.database, self.spool,
                         on_series_complete=scheduler.wake.set if scheduler is not None else None,
                         blobs=self.blobs)
        scp.start()
        self._parts["scp"] = scp

    def _start_api(self) -> None:
        from service.api.app import create_app
        from service.api.readiness import Probes
        from service.api.server import ApiServer
        from service.store.pool import PooledRows

        scp = self._parts.get("scp")
        probes = Probes(scp_listening=scp.is_listening if scp is not None else None)
        app = create_app(self.settings, PooledRows(self.database), probes)  # no connect per request
        api = self.settings.api
        server = ApiServer(app, api.bind, api.port, api.max_connections, api.header_timeout_s)
        server.start()
        self._parts["api"] = server
        self._start_chain_watch()

    def _start_chain_watch(self) -> None:
        """Check the audit trail's hash chain in the process whose /metrics is read."""
        from service.audit_watch import ChainWatch

        trail = self.settings.audit
        if not trail.enabled or trail.verify_interval_h <= 0:
            return
        watch = ChainWatch(Path(trail.path), trail.verify_interval_h * 3600.0)
        # not one of self._threads (the workers stop() waits for): it only reads, and
        # leaves at the stop event between checks
        threading.Thread(target=watch.run, args=(self._stop,), name="audit-chain-watch",
                         daemon=True).start()

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask :meth:`wait` to reload the TLS files (safe from a signal handler: SIGHUP)."""
        self._reload.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop` (or a signal); serve reload requests meanwhile."""
        while not self._stop.wait(0.2):
            if self._reload.is_set():
                self._reload.clear()
                self.reload_tls()

    def reload_tls(self) -> None:
        """Re-read the TLS port's files now and refresh the destinations' expiry metric.

        Destinations' client certificates are read at each association anyway;
        a file that does not load is logged and the old pair kept.
        """
        from service.net.scu import tls_destinations_checked

        scp = self._parts.get("scp")
        reloaded = scp.reload_tls() if scp is not None else None
        bad = tls_destinations_checked(self.settings) if "sender" in self._parts else []
        log.info("tls_reload_requested", extra={"fields": {
            "scp": {None: "no_tls_port", True: "reloaded", False: "kept_old"}[reloaded],
            "destinations_failing": bad}})

    def stop(self) -> None:
        """Orderly shutdown: SCP first, then workers (grace), sender, API."""
        from service.store.jobs import release_leases

        self._stop.set()
        if "scp" in self._parts:
            self._parts.pop("scp").stop()
        grace_s = self.settings.worker.shutdown_grace_s
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy and hasattr(self, "run"):
            conn = self.database.connect(check_same_thread=False)
            try:
                given_back = release_leases(conn, self.run.owner_prefix)
            finally:
                conn.close()
            log.warning("jobs_given_back", extra={"fields": {"jobs": given_back}})
        if "sender" in self._parts:
            sender = self._parts.pop("sender")
            sender.stop()
            if sender.running_threads == 0:  # else a pass still sends what it claimed
                self._release_outbox_claims()
        if hasattr(self, "run"):
            self.run.close()
        if "api" in self._parts:
            self._parts.pop("api").stop()
        audit.emit("application_stop", audit.APPLICATION_ACTIVITY, audit.APPLICATION_STOP,
                   participants=[self._audit_application()],
                   details={"components": list(self.components)})
        audit.close_trail()
        log.info("node_stopped")

    def _release_outbox_claims(self) -> None:
        """Hand back what the stopped sender had claimed and not sent (sent at the next start)."""
        from service.store.outbox import expire_leases

        conn = self.database.connect(check_same_thread=False)
        try:
            released = expire_leases(conn, self.run.owner_prefix)
        finally:
            conn.close()
        if released:
            log.info("outbox_claims_released", extra={"fields": {"outputs": released}})

    def _audit_application(self) -> dict[str, Any]:
        try:
            user: str | None = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (a container's random uid)
            user = None
        return audit.participant(audit.APPLICATION_ROLE, requestor=True,
                                 ae_title=self.settings.node.ae_title, user=user)

    def _configuration(self) -> dict[str, Any]:
        """What the audit trail records at start-up: settings and models, no secrets."""
        from service.pipelines.registry import check_enabled_models

        s = self.settings
        try:
            models: Any = {name: [{"name": m.name, "path": m.path, "ok": m.ok,
                                   "sha256": m.sha256, "detail": m.detail} for m in found]
                           for name, found in check_enabled_models(s.pipelines).items()}
        except Exception as exc:  # a broken check must not stop the start (logged)
            log.exception("audit_model_check_failed")
            models = {"error": type(exc).__name__}
        return {
            "version": __version__, "components": list(self.components), "pid": os.getpid(),
            "node": s.node.model_dump(mode="json"),
            "allowed_callers": [c.model_dump(mode="json") for c in s.allowed_callers],
            "destinations": [d.model_dump(mode="json") for d in s.destinations],
            "pipelines": {name: {"enabled": p.enabled, "version": getattr(
                self.pipelines.get(name), "version", None)} for name, p in s.pipelines.items()},
            "models": models,
            "api": {"bind": s.api.bind, "port": s.api.port,
                    "token": "set" if s.api.token else "not set"},
            "retention_days": s.retention_days, "audit": s.audit.model_dump(mode="json"),
        }
