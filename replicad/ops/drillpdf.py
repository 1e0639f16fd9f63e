"""A PDF print of a drill report (``replicad drill ... --pdf``; issue 16, item 5).

The signed HTML report stays the evidence (``replicad drill verify`` checks it); the PDF is its
print for an auditor who files PDFs, made by headless Chromium (Debian ``chromium``, the
browser the status page tests use) with ``--print-to-pdf`` from the HTML file written just
before. The report has no script and a ``default-src 'none'`` policy, so the browser loads
nothing but the file. No PDF library of our own: the page the auditor reads in a browser is
the page printed.

Chromium runs in its own session (its helpers too) with a throwaway profile, bounded by
``timeout_s``; on a timeout its process group, which it leads, is killed by its PID. The PDF is
written to a temporary name in the target's directory, checked (``%PDF-`` header), fsynced, and
linked to its name only if that name is free (a report is never overwritten), then the
directory is fsynced.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from replicad.core.errors import NotSupportedError, ToolError, UsageError, from_os_error

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-sync",
         "--disable-background-networking", "--disable-default-apps", "--mute-audio",
         "--no-pdf-header-footer", "--print-to-pdf-no-header")
PDF_TIMEOUT_S = 120.0


def find_browser() -> str:
    """The headless browser's path. Raises NotSupportedError when none of :data:`BROWSERS` is
    installed (the HTML report is written anyway)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    raise NotSupportedError("--pdf prints the report with headless Chromium, which is not installed on this machine "
                            "(Debian: apt-get install chromium); the signed HTML report needs nothing",
                            looked_for=list(BROWSERS))


def pdf_path_for(report: Path) -> Path:
    """The PDF beside the HTML report ``report`` (same name, ``.pdf``)."""
    return report.with_suffix(".pdf")


def check_free(pdf: Path) -> None:
    """Raises UsageError when ``pdf`` exists (a report is never overwritten) or its directory is
    not writable; called before the drill runs."""
    if pdf.exists():
        raise UsageError(f"{pdf} exists: a drill report is never overwritten; name a new --report", path=str(pdf))
    if not os.access(pdf.absolute().parent, os.W_OK):
        raise UsageError(f"the directory of {pdf} is not writable", path=str(pdf))


def print_pdf(html_file: Path, pdf: Path, browser: str | None = None, timeout_s: float = PDF_TIMEOUT_S) -> Path:
    """Print the HTML file ``html_file`` to the new file ``pdf`` with headless Chromium.

    Returns ``pdf``. Raises NotSupportedError (no browser), UsageError (``pdf`` exists),
    ToolError (the browser failed, timed out or wrote no PDF; evidence ``command``,
    ``returncode``, ``stderr_tail``), a typed OSError."""
    binary = browser or find_browser()
    pdf = pdf.absolute()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{pdf.name}.", suffix=".tmp", dir=pdf.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="replicad-pdf-") as profile:
            argv = [binary, *FLAGS, *(("--no-sandbox",) if os.geteuid() == 0 else ()),
                    f"--user-data-dir={profile}", f"--print-to-pdf={tmp}", html_file.absolute().as_uri()]
            _run(argv, timeout_s)
        with open(tmp, "rb") as f:
            head = f.read(5)
            os.fsync(f.fileno())
        if head != b"%PDF-":
            raise ToolError(f"{binary} wrote no PDF for {html_file}", command=argv[0], returncode=0,
                            stderr_tail="")
        try:
            os.link(tmp, pdf)  # fails if the name is taken: never over an existing file
        except FileExistsError:
            raise UsageError(f"{pdf} exists: a drill report is never overwritten", path=str(pdf)) from None
        dfd = os.open(pdf.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        raise from_os_error(err, f"printing the drill report to {pdf}", path=str(pdf)) from None
    finally:
        tmp.unlink(missing_ok=True)
    return pdf


def _run(argv: list[str], timeout_s: float) -> None:
    """Run the browser in its own session; ToolError on a non-zero exit or a timeout (then its
    process group is killed by its PID)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group it leads: the browser and its helpers
        _, err = proc.communicate()
        raise ToolError(f"{argv[0]} did not print the report within {timeout_s:.0f} s", command=argv[0],
                        returncode=None, stderr_tail=err.decode(errors="replace")[-1000:]) from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers it left behind, if any
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        raise ToolError(f"{argv[0]} could not print the report (exit {proc.returncode})", command=argv[0],
                        returncode=proc.returncode, stderr_tail=err.decode(errors="replace")[-1000:])
