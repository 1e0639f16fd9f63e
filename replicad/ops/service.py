"""The composition root of a site process: build the :class:`~replicad.site.daemon.SiteDaemon`,
give it its admin API, and run it under systemd until it is told to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from replicad.config import SiteConfig
from replicad.ops.admin import admin_routes, json_route_errors
from replicad.site.daemon import SiteDaemon
from replicad.site.datadir import prepare_data_dir
from replicad.telemetry.systemd import Notifier, configure_logging

log = logging.getLogger("replicad.ops.service")


async def run_site(cfg: SiteConfig, config_path: Path | None = None) -> int:
    """Run a site until SIGTERM/SIGINT; returns the process exit code (0 on a clean stop).

    Under systemd (``Type=notify``): READY=1 is sent once the store and catalog are open,
    the servers listen and Raft knows a leader (STATUS tells what it waits for meanwhile);
    WATCHDOG=1 pings come from the event loop; SIGHUP re-reads ``config_path`` and applies
    what can change safely (:func:`replicad.site.reload.reload_plan`); STOPPING=1 precedes the shutdown.

    Raises the error the site stopped itself for (``SiteDaemon.fatal``, e.g.
    MembershipMismatchError), after a clean stop: the CLI exits with its code.
    """
    configure_logging(cfg.log_level)
    prepare_data_dir(Path(cfg.data_dir))  # a ConfigError naming data_dir (was "not_found: replicad run: ...")
    notifier = Notifier.from_env()
    daemon = SiteDaemon(cfg)
    loop = asyncio.get_running_loop()
    watchdog: asyncio.Task | None = None
    started = False  # "stopped" is logged only for a site that started (not one refused at start)
    try:
        await daemon.start(admin_routes=admin_routes, admin_middlewares=(json_route_errors,))
        started = True
        watchdog = asyncio.create_task(notifier.watchdog_loop(), name="watchdog")
        if config_path is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.create_task(
                daemon.reload_from(config_path, notifier), name="reload"))
        ready = asyncio.create_task(daemon.wait_joined(notifier), name="ready")
        # what the start built (modules, config, store, catalog, Raft node) lives as long as the process:
        # the cyclic collector need not walk it again, nor the interpreter's last collection at exit
        # (Python's gc.freeze(), 3.7+): a site exited 0.4-0.7 s after SIGTERM, ~0.1 s now
        gc.freeze()
        await daemon.run_until_stopped()
        ready.cancel()
    finally:
        notifier.stopping()
        if watchdog is not None:
            watchdog.cancel()
        await daemon.stop()
        if started:
            log.info("site %s stopped", cfg.site_id)
    if daemon.fatal is not None:
        raise daemon.fatal  # the site stopped itself (e.g. a membership it disagrees with): exit with its code
    return 0
