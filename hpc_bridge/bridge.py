"""The composition root: everything one service process runs, built in one place and started once.

The store and the API always; the daemon and the WES supervisor only in the process that holds the
database's daemon lock (one of each per database), so a second `serve` on the same database serves
the API alone and builds no daemon. `serve`, the tests and the benchmarks start the service this way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Flask

from hpc_bridge.app import create_app
from hpc_bridge.config import SiteConfig
from hpc_bridge.daemon import Daemon, DaemonLock
from hpc_bridge.metrics import Metrics, database_writable, lock_held, slurm_answers
from hpc_bridge.slurm.client import CliSlurmClient, SlurmClient
from hpc_bridge.store import Store
from hpc_bridge.tes.service import TaskService
from hpc_bridge.wes.supervisor import Supervisor

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, config: SiteConfig, *, tes_url: str, slurm: SlurmClient | None = None) -> None:
        """`tes_url`: where this machine's processes (WES engines) reach the API."""
        self.config = config
        self.store = Store(config.database)
        self.lock = DaemonLock(config.database)
        self.daemon: Daemon | None = None
        self.supervisor: Supervisor | None = None
        self._tes_url = tes_url
        self._slurm = slurm
        self._threads: list[threading.Thread] = []

    @property
    def runs_daemon(self) -> bool:
        return self.daemon is not None

    def start(self) -> Flask:
        """Take the lock if free and start the daemon and supervisor threads; returns the app."""
        metrics = Metrics(self.store)
        held = self.lock.acquire()
        ready = [("database", database_writable(self.store)), ("daemon lock", lock_held(lambda: held))]
        if held:
            slurm = self._slurm or CliSlurmClient(bin_dir=self.config.slurm.bin_dir,
                                                  submit_as=self.config.slurm.submit_as,
                                                  timeout=self.config.slurm.command_timeout)
            if isinstance(slurm, CliSlurmClient):
                slurm.observer = metrics.slurm_call
            ready.append(("slurm", slurm_answers(metrics, within=10 * self.config.monitor.idle_interval)))
            self.daemon = Daemon(self.config, self.store, slurm, metrics)
            self.supervisor = Supervisor(self.config, self.store,
                                         TaskService(self.store, self.config, self.daemon.wake),
                                         tes_url=self._tes_url)
            self._spawn("hpc-bridge-daemon", self.daemon.run)
            self._spawn("hpc-bridge-wes", self.supervisor.run)
        else:
            log.warning("another daemon holds %s: serving the API only", self.lock.path)
        nothing: Callable[[], None] = lambda: None  # noqa: E731
        return create_app(self.config, store=self.store,
                          on_change=self.daemon.wake if self.daemon else nothing,
                          on_run_change=self.supervisor.wake if self.supervisor else nothing,
                          metrics=metrics, ready=ready)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown()
        if self.daemon is not None:
            self.daemon.stop()
        for thread in self._threads:
            thread.join(timeout)
        self.lock.release()
