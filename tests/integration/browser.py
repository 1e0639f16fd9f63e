"""A real headless Chromium (Debian ``chromium``) for the tests: dump a page's DOM after it
loaded, or save a screenshot of it. Each call is one Chromium process in its own process
group (its helpers too), with a fresh profile, bounded in time and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-extensions", "--disable-sync", "--disable-default-apps", "--mute-audio")


def chromium_binary() -> str:
    """The chromium binary; skips (fails in CI) when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (Debian package `chromium`; scripts/setup.sh), and CI must run this")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def run_chromium(args: list[str], timeout_s: float = 60) -> str:
    """Run headless Chromium with :data:`FLAGS` and a throwaway profile; its stdout.

    Raises AssertionError (with its stderr tail) when it exits non-zero or takes longer than
    ``timeout_s`` (then its process group is killed)."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="replicad-chromium-") as profile:
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started: Chromium and its helpers
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"chromium took longer than {timeout_s}s: {err.decode(errors='replace')[-2000:]}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind, if any
            except ProcessLookupError:
                pass
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return out.decode("utf-8", "replace")


def dump_dom(url: str) -> str:
    """The DOM of ``url`` serialized after load (``--dump-dom``: scripts, had any run, would show)."""
    return run_chromium(["--dump-dom", url])


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1000) -> Path:
    """A PNG screenshot of ``url`` at ``width`` x ``height`` written to ``path``."""
    run_chromium([f"--screenshot={path}", f"--window-size={width},{height}", "--hide-scrollbars", url])
    assert path.is_file(), f"chromium wrote no screenshot at {path}"
    return path
