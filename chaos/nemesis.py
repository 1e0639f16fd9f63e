"""Faults, each recorded in the history as ``{op: "nemesis", f: <fault>, ...}`` (invoke then ok/fail).

Faults (DESIGN §9): ``kill`` (SIGKILL) and ``start``; ``pause`` (SIGSTOP) and ``resume``
(SIGCONT); ``isolate``/``heal`` (the site's veth down/up: a total partition of that site);
``blackhole``/``unblackhole`` (one direction: ``site`` can no longer send to ``peer``);
``throttle``/``unthrottle`` (egress rate limit; this kernel has no ``netem``, so delay and
loss are approximated by a slow link); ``corrupt`` (one flipped byte in a pack file of one
site). The checker rebuilds from these events which sites could reach which at any instant.

Disk, fsync and clock faults: ``small_disk`` (a site's data dir on its own tmpfs, mounted
before the site starts) with ``fill``/``unfill`` (a filler file leaving ``leave_bytes``
free); ``slow_fsync``/``fast_fsync`` (``strace -f -p PID -e inject=fsync,fdatasync:
delay_enter=...`` attached to the running daemon, detached by signalling that strace by
PID); ``clock`` (a site started under libfaketime reads its offset from a file,
``FAKETIME_NO_CACHE=1``, so the offset can be stepped; libfaketime 0.9.10 shifts the
monotonic clock too — ``FAKETIME_DONT_FAKE_MONOTONIC=1`` makes Python 3.11's ``time.sleep``
fail with EINVAL — so scenarios step the offset only while the site is down).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from .harness import Cluster, History, sh

PACK_HEADER_BYTES = 16
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FILLER_NAME = "chaos-filler.bin"
_ENV_LOCK = threading.Lock()


class Nemesis:
    """Applies faults to a :class:`Cluster` and records them; :meth:`heal_all` undoes every
    network fault and resumes paused sites (killed sites are restarted)."""

    def __init__(self, cluster: Cluster, history: History, rng: random.Random) -> None:
        self.c = cluster
        self.h = history
        self.rng = rng
        self.isolated: set[str] = set()
        self.blackholes: set[tuple[str, str]] = set()
        self.throttled: set[str] = set()
        self.paused: set[str] = set()
        self.killed: set[str] = set()
        self.mounts: dict[str, Path] = {}
        self.fillers: set[str] = set()
        self.stracers: dict[str, subprocess.Popen] = {}
        self.clock_files: dict[str, Path] = {}

    def _do(self, f: str, fn, **fields) -> None:
        self.h.record("invoke", "nemesis", f=f, **fields)
        try:
            fn()
        except Exception as err:  # noqa: BLE001 — recorded, then re-raised to the scenario
            self.h.record("fail", "nemesis", f=f, error=repr(err)[:300], **fields)
            raise
        self.h.record("ok", "nemesis", f=f, **fields)

    def kill(self, site: str) -> None:
        self._do("kill", lambda: self.c.signal(site, signal.SIGKILL), site=site)
        self.killed.add(site)
        self.paused.discard(site)

    def start(self, site: str) -> None:
        self._do("start", lambda: self.c.start(site), site=site)
        self.killed.discard(site)

    def pause(self, site: str) -> None:
        self._do("pause", lambda: self.c.signal(site, signal.SIGSTOP), site=site)
        self.paused.add(site)

    def resume(self, site: str) -> None:
        self._do("resume", lambda: self.c.signal(site, signal.SIGCONT), site=site)
        self.paused.discard(site)

    def isolate(self, site: str) -> None:
        self._do("isolate", lambda: self.c.link(site, False), site=site)
        self.isolated.add(site)

    def heal(self, site: str) -> None:
        self._do("heal", lambda: self.c.link(site, True), site=site)
        self.isolated.discard(site)

    def blackhole(self, site: str, peer: str) -> None:
        self._do("blackhole", lambda: self.c.blackhole(site, peer, True), site=site, peer=peer)
        self.blackholes.add((site, peer))

    def unblackhole(self, site: str, peer: str) -> None:
        self._do("unblackhole", lambda: self.c.blackhole(site, peer, False), site=site, peer=peer)
        self.blackholes.discard((site, peer))

    def throttle(self, site: str, rate: str = "512kbit") -> None:
        self._do("throttle", lambda: self.c.throttle(site, rate), site=site, rate=rate)
        self.throttled.add(site)

    def unthrottle(self, site: str) -> None:
        self._do("unthrottle", lambda: self.c.throttle(site, None), site=site)
        self.throttled.discard(site)

    def corrupt(self, site: str) -> dict:
        """Flip one byte in the payload area of the largest pack file of ``site``. Returns
        ``{pack, offset}``. Raises FileNotFoundError if the site has no pack."""
        packs = sorted((self.c.sites[site].data_dir / "chunks").rglob("*.pack"))
        if not packs:
            raise FileNotFoundError(f"{site} has no pack file")
        pack = max(packs, key=lambda p: p.stat().st_size)
        size = pack.stat().st_size
        offset = self.rng.randrange(PACK_HEADER_BYTES + (size - PACK_HEADER_BYTES) // 4, size)
        where = {"pack": str(pack), "offset": offset}

        def flip() -> None:
            with open(pack, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0x5A]))
                f.flush()
                os.fsync(f.fileno())

        self._do("corrupt", flip, site=site, **where)
        return where

    # ------------------------------------------------------------------ disk, fsync, clock
    def small_disk(self, site: str, size: str = "32m") -> None:
        """Mount a tmpfs of ``size`` on ``site``'s data dir (before the site is started).
        Undone by :meth:`unmount_all` after the processes are gone."""
        d = self.c.sites[site].data_dir

        def mount() -> None:
            d.mkdir(parents=True, exist_ok=True)
            sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", f"rpl-chaos-{site}", str(d))

        self._do("small_disk", mount, site=site, size=size, path=str(d))
        self.mounts[site] = d

    def free_bytes(self, site: str) -> int:
        st = os.statvfs(self.c.sites[site].data_dir)
        return st.f_bavail * st.f_frsize

    def fill(self, site: str, leave_bytes: int = 8192) -> dict:
        """Write a filler file into ``site``'s data dir until only about ``leave_bytes`` stay
        free. Returns ``{filler_bytes, free_bytes}``."""
        path = self.c.sites[site].data_dir / FILLER_NAME
        out: dict = {}

        def fill() -> None:
            block = b"\xa5" * (1 << 20)
            with open(path, "ab") as f:
                while True:
                    room = self.free_bytes(site) - leave_bytes
                    if room <= 0:
                        break
                    try:
                        f.write(block[:min(len(block), room)])
                        f.flush()
                    except OSError:
                        break
            out.update(filler_bytes=path.stat().st_size, free_bytes=self.free_bytes(site))

        self._do("fill", fill, site=site, leave_bytes=leave_bytes)
        self.fillers.add(site)
        self.h.record("info", "disk", site=site, **out)
        return out

    def unfill(self, site: str) -> None:
        """Delete the filler file: the space comes back."""
        path = self.c.sites[site].data_dir / FILLER_NAME
        self._do("unfill", lambda: path.unlink(missing_ok=True), site=site)
        self.fillers.discard(site)
        self.h.record("info", "disk", site=site, filler_bytes=0, free_bytes=self.free_bytes(site))

    def unmount_all(self) -> None:
        """Unmount every tmpfs of :meth:`small_disk` (lazily if still busy). Call after teardown."""
        for site, d in sorted(self.mounts.items()):
            res = sh("umount", str(d), check=False)
            if res.returncode != 0:
                sh("umount", "-l", str(d), check=False)
            self.h.record("info", "nemesis", f="unmount", site=site, rc=res.returncode)
        self.mounts.clear()

    def slow_fsync(self, site: str, delay_s: float = 3.0, max_terms: int = 6) -> None:
        """Delay every fsync/fdatasync of ``site``'s daemon (all threads) by ``delay_s``
        with strace fault injection. ``max_terms`` is the largest term increase the checker
        tolerates while it lasts (+ 15 s): more is an election storm."""
        proc = self.c.sites[site].proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{site} is not running")
        d = f"{int(delay_s * 1e6)}us"

        def attach() -> None:
            st = subprocess.Popen(["strace", "-f", "-qq", "-p", str(proc.pid), "-o", "/dev/null",
                                   "-e", "trace=fsync,fdatasync",
                                   "-e", f"inject=fsync,fdatasync:delay_enter={d}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(0.5)
            if st.poll() is not None:
                raise RuntimeError(f"strace exited at once ({st.returncode})")
            self.stracers[site] = st

        self._do("slow_fsync", attach, site=site, pid=proc.pid, delay_s=delay_s, max_terms=max_terms)

    def fast_fsync(self, site: str) -> None:
        """Detach the strace of :meth:`slow_fsync` (SIGINT by PID, SIGKILL if it lingers)."""
        st = self.stracers.pop(site, None)

        def detach() -> None:
            if st is None or st.poll() is not None:
                return
            st.send_signal(signal.SIGINT)
            try:
                st.wait(timeout=15)
            except subprocess.TimeoutExpired:
                st.kill()
                st.wait(timeout=5)
            proc = self.c.sites[site].proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a tracer that died mid-stop leaves no stopped tracee

        self._do("fast_fsync", detach, site=site)

    def faketime_env(self, site: str, offset: str = "+0") -> dict[str, str]:
        """Environment that runs ``site`` under libfaketime with a steppable ``offset``
        (e.g. ``"+2h"``, ``"-7200"``). Raises FileNotFoundError without libfaketime."""
        if not LIBFAKETIME.exists():
            raise FileNotFoundError(f"{LIBFAKETIME} missing (apt-get install faketime)")
        f = self.c.sites[site].dir / "faketime.rc"
        f.write_text(offset + "\n")
        self.clock_files[site] = f
        return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(f), "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "0", "FAKETIME_DONT_RESET": "1"}

    def start_with_env(self, site: str, env: dict[str, str]) -> None:
        """Start ``site`` (:meth:`Cluster.start`) with ``env`` added to its environment."""
        def go() -> None:
            with _ENV_LOCK:
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    self.c.start(site)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v

        offset = None
        if "FAKETIME_TIMESTAMP_FILE" in env:
            try:
                offset = Path(env["FAKETIME_TIMESTAMP_FILE"]).read_text().strip()
            except OSError:
                pass
        self._do("start", go, site=site, env=sorted(env), clock_offset=offset)
        self.killed.discard(site)

    def clock(self, site: str, offset: str) -> None:
        """Step the wall clock of a site started with :meth:`faketime_env` to ``offset``."""
        f = self.clock_files[site]
        self._do("clock", lambda: f.write_text(offset + "\n"), site=site, offset=offset)

    def heal_all(self) -> None:
        """Undo every active fault: resume, reconnect, unthrottle, restart killed sites
        (and detach slow-fsync tracers, delete filler files)."""
        for s in sorted(self.stracers):
            self.fast_fsync(s)
        for s in sorted(self.fillers):
            self.unfill(s)
        for s in sorted(self.paused):
            self.resume(s)
        for s in sorted(self.isolated):
            self.heal(s)
        for s, p in sorted(self.blackholes):
            self.unblackhole(s, p)
        for s in sorted(self.throttled):
            self.unthrottle(s)
        for s in sorted(self.killed):
            self.start(s)


def pack_files(data_dir: Path) -> list[Path]:
    """Pack files of a site's chunk store."""
    return sorted((Path(data_dir) / "chunks").rglob("*.pack"))
