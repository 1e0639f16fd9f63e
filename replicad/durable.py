"""Small durability helpers shared by every module that renames files into place."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """fsync the directory ``path`` so that a rename or a new entry in it survives a power loss
    (POSIX: a file's fsync does not persist its directory entry). Raises the OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
