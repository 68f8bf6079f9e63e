"""The one way ivdseg writes anything: into a temporary name beside the target, then renamed onto it.

``atomic_write`` is for files (volumes, .seg.nrrd, JSON, PNG, Keras checkpoints); ``atomic_folder`` is for
folders that appear whole or not at all (datasets, model packages, installed models). A crash, a full disk or
a kill at any moment leaves either the old target or the new one, never a half-written one, and no temporary
file or folder behind (except after a SIGKILL, whose leftovers start with a dot and end in ``.tmp*``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

from ivdseg.errors import IvdsegError


def _check_target(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise IvdsegError(f"{path} already exists; choose another name or pass --overwrite.")
    folder = path.parent
    if not folder.is_dir():
        raise IvdsegError(f"The folder {folder} does not exist; create it first or choose another {what}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise IvdsegError(f"The folder {folder} is not writable; choose another {what}.")


def file_suffix(path: Path) -> str:
    """The extension that decides a file's format, lower case: ".nii.gz" for gzipped NIfTI, else the last one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def atomic_write(path, write: Callable[[Path], object], overwrite: bool = False, mode: int = 0o666) -> Path:
    """Checks the target, calls ``write(temp_path)`` on a temporary file beside it, then renames it onto ``path``.

    The temporary name keeps the target's extension (``.nii.gz``, ``.nrrd``, ``.keras``, ...), so libraries that
    choose a format by extension write the same format.

    Args:
        path: the target file.
        write: writes the content to the path it is given.
        overwrite: replace an existing file.
        mode: permissions of the new file: 0o666 less the umask by default; an explicit stricter mode (0o600 for
            secrets) is set as given, also if ``write`` replaces the file.

    Returns:
        The path written.

    Raises:
        IvdsegError: the target is a folder, exists and not ``overwrite``, its folder is missing or not writable,
            or the write failed (disk full, permissions); no temporary file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise IvdsegError(f"{path} is a folder; give a file name.")
    _check_target(path, overwrite, "output path")
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{file_suffix(path)}"
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        write(temp)
        if mode != 0o666:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as exc:
        raise IvdsegError(f"{path} could not be written ({exc.strerror or exc}); check the free disk space and "
                          "the folder's permissions.") from exc
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    return path


def write_json(path, obj, overwrite: bool = True, mode: int = 0o666) -> Path:
    """Writes ``obj`` as indented JSON, atomically (see :func:`atomic_write`)."""
    def write(temp):
        with open(temp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")

    return atomic_write(path, write, overwrite=overwrite, mode=mode)


@contextlib.contextmanager
def atomic_folder(path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging folder beside ``path``; on success it replaces ``path`` whole.

    The folder is private to its owner (0700, as mkdtemp makes it): datasets and models are derived from patients.

    An exception inside the block (or Ctrl-C) removes the staging folder and leaves an existing ``path`` as it
    was. With ``overwrite``, the old folder is moved aside first and removed only once the new one is in place.

    Raises:
        IvdsegError: ``path`` exists and not ``overwrite``, its parent is missing or not writable, or the disk
            filled up (nothing is left behind).
    """
    path = Path(path)
    _check_target(path, overwrite, "folder")
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        yield staging
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == 28:
            raise IvdsegError(f"The disk holding {path} is full; nothing was written.") from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    try:
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(staging, path)
    except OSError:
        if old is not None and not path.exists():
            os.replace(old, path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
