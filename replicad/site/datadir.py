"""The site's ``data_dir``: checked by ``replicad check-config`` and prepared by ``replicad run``
with errors that name it (an operator read ``not_found: replicad run: No such file or directory``
for a ``data_dir`` under ``/proc``, and ``check-config`` said "ok").

Writability is probed by creating (and removing at once) a file in the directory, or a
directory in its nearest existing ancestor when it does not exist yet: ``os.access`` answers
yes to root on file systems that refuse the write (``/proc``, ``/sys``), and says nothing of a
full or read-only one until it is tried.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from replicad.core.errors import ConfigError

PROBE_PREFIX = ".replicad-check-"


def data_dir_problems(path: Path) -> list[str]:
    """What keeps ``path`` from serving as a data dir, as ``"data_dir: ..."`` sentences (empty:
    none): it exists and is not a directory, or is not writable (a probe file cannot be
    created), or it does not exist and cannot be created (its nearest existing ancestor is not
    a directory, or a probe directory cannot be created there). Checked as the user running
    this process (``check-config`` run as root says nothing of the daemon's user). Leaves
    nothing behind; never raises."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            return [f"data_dir: {path} cannot be read: {err.strerror}"]
        return _creatable(path)
    if not stat.S_ISDIR(st.st_mode):
        return [f"data_dir: {path} exists and is not a directory"]
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
    except OSError as err:
        return [f"data_dir: {path} is not writable: {err.strerror}{_as_user(err)}"]
    os.close(fd)
    os.unlink(probe)
    return []


def _creatable(path: Path) -> list[str]:
    """Problems creating the missing ``path``: its nearest existing ancestor must be a directory
    in which a directory can be created (probed, then removed)."""
    ancestor = Path(path).absolute().parent
    while True:
        try:
            os.stat(ancestor)
            break
        except OSError as err:
            if err.errno == errno.ENOTDIR:
                return [f"data_dir: {path} cannot be created: a part of it is not a directory"]
            if err.errno != errno.ENOENT or ancestor == ancestor.parent:
                return [f"data_dir: {path} cannot be created: {ancestor}: {err.strerror}"]
            ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [f"data_dir: {path} cannot be created: {ancestor} is not a directory"]
    try:
        probe = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=ancestor)
    except OSError as err:
        return [f"data_dir: {path} cannot be created in {ancestor}: {err.strerror}{_as_user(err)}"]
    os.rmdir(probe)
    return []


def _as_user(err: OSError) -> str:
    """For a permission error: which user was refused (the daemon's user may be another one)."""
    if err.errno not in (errno.EACCES, errno.EPERM):
        return ""
    try:
        import pwd

        name = pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        name = str(os.geteuid())
    return f" (checked as user {name}; the daemon's user, e.g. User= of its systemd unit, may differ)"


def prepare_data_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if missing, for ``replicad run``.

    Raises:
        ConfigError: it cannot be created or used; ``problems`` as :func:`data_dir_problems`
            (``data_dir: /proc/x cannot be created in /proc: No such file or directory``),
            evidence ``path``.
    """
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problems = data_dir_problems(path) or [f"data_dir: {path} cannot be created: {err.strerror}"]
        raise ConfigError(problems[0], problems=problems, path=str(path)) from None
    problems = data_dir_problems(path)
    if problems:
        raise ConfigError(problems[0], problems=problems, path=str(path))
