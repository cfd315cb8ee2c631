"""Checks that a command's output file can be written, made before the work that fills it (a
benchmark, an epoch of training) rather than after it."""
import os
import tempfile

from .errors import CommandError


def check_writable(path: str, flag: str) -> None:
    """Raise CommandError (one line naming ``flag`` and ``path``) unless a file can be written at
    ``path``: its folder exists (missing parent folders are created, as the commands document) or
    can be made, is a folder, and takes a new file (tried with a temporary file, removed again:
    permission bits alone mislead, e.g. for root or on read-only mounts); ``path`` itself is not a
    folder.  Leaves an existing file at ``path`` untouched."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise CommandError(f"{flag} {path}: is a folder; expected a file path")
    folder = os.path.dirname(full)
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise CommandError(f"{flag} {path}: {_first_file(folder)} is a file, not a folder") from None
    except OSError as e:
        raise CommandError(f"{flag} {path}: cannot create the folder {folder} ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".googlenet_fast-write-check-", dir=folder)
    except OSError as e:
        raise CommandError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.remove(probe)


def _first_file(folder: str) -> str:
    """The nearest existing path at or above ``folder`` (the file that blocks it)."""
    p = folder
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    return p
