"""Files and folders that hold personal data: readable by their owner only.

State databases, send journals and outcomes files name every recipient, so they are created
``0600`` and the folders bulksend creates for them ``0700``, whatever the umask. Files and folders
that already exist keep the mode their owner gave them.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

__all__ = ["FILE_MODE", "FOLDER_MODE", "create_private_file", "make_private_dirs"]

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def make_private_dirs(folder: str | PathLike[str]) -> None:
    """Create ``folder`` and its missing parents, each ``0700``; existing ones are left alone."""
    path = Path(folder)
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for part in reversed(missing):
        try:
            part.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            continue  # created meanwhile by another process: theirs to keep
        # mkdir's mode goes through the umask; a umask of 0 must not widen it, nor 077 matter.
        os.chmod(part, FOLDER_MODE)


def create_private_file(path: str | PathLike[str]) -> bool:
    """Create ``path`` empty with mode ``0600`` if it does not exist; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # the umask can only narrow os.open's mode; make it exact
    finally:
        os.close(fd)
    return True
