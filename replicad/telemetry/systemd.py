"""systemd integration: readiness and watchdog notifications, journald-friendly logs.

The notification protocol is sd_notify(3): newline-separated ``KEY=VALUE`` assignments
sent as one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@``
means the abstract namespace). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op. The watchdog interval comes from ``$WATCHDOG_USEC`` (honoured only when
``$WATCHDOG_PID`` is unset or names this process), and pings are sent at half of it, from
the event loop: a wedged loop stops the pings and systemd restarts the daemon.

Logging: when stderr is connected to the journal (``$JOURNAL_STREAM`` set), lines carry
the sd-daemon(3) ``<N>`` priority prefix and no timestamp (journald adds its own).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

log = logging.getLogger("replicad.telemetry.systemd")

# syslog priorities of sd-daemon(3), by logging level
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class Notifier:
    """Sends sd_notify messages; inert when not started by systemd.

    Args:
        socket_path: value of ``$NOTIFY_SOCKET`` (None: no-op notifier).
        watchdog_usec: value of ``$WATCHDOG_USEC`` for this process (None: no watchdog).
    """

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Notifier":
        """The notifier systemd set up for this process (from the environment)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` fields (e.g. ``READY=1``, ``STATUS=...``); returns False on failure
        (a lost notification is logged, never fatal)."""
        if self.socket_path is None:
            return False
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, address)
            return True
        except OSError as err:
            log.warning("sd_notify to %s failed: %s", self.socket_path, err)
            return False

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def reloading(self) -> None:
        self.notify(RELOADING=1, STATUS="reloading configuration")

    def stopping(self) -> None:
        self.notify(STOPPING=1, STATUS="stopping")

    async def watchdog_loop(self) -> None:
        """Ping ``WATCHDOG=1`` every half watchdog interval, from the event loop, forever."""
        if self.watchdog_usec is None or self.socket_path is None:
            return
        period_s = self.watchdog_usec / 2e6
        while True:
            self.notify(WATCHDOG=1)
            await asyncio.sleep(period_s)


def escaped(text: str) -> str:
    """``text`` with every non-printable character (``str.isprintable``: newline, carriage return,
    tab, escape and other control, format and separator characters) as its backslash escape
    (``\\n``, ``\\x1b``, ``\\u2028``): one log record is one line whatever a peer put in a name,
    a reason or an error it sent (review R9, F6: a signed request's reason holding a newline wrote
    whole forged lines, dated and leveled, into every site's log). Printable text is unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class LineFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(name)s: %(message)s`` with the message :func:`escaped`; a
    traceback (this process's own) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(_escaped_record(record))


def _escaped_record(record: logging.LogRecord) -> logging.LogRecord:
    copy = logging.makeLogRecord(record.__dict__)
    copy.message = escaped(record.message)
    return copy


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` lines for journald (which timestamps them itself); the message
    :func:`escaped` (a newline in it would start a journal record of any priority)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {escaped(record.getMessage())}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def configure_logging(level: str = "info") -> None:
    """Log to stderr: journal format under systemd (``$JOURNAL_STREAM``), else timestamped lines."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
