"""Atomic writes: write to a temporary sibling of the target, then rename it into place.

A crash mid-write leaves the previous file (or nothing) in place, never a truncated one. New
files and folders get the permissions `open()` and `mkdir` would give them (0666 and 0777 less
the umask), not `tempfile`'s private 0600 and 0700; a file that is replaced keeps its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to `path` if the block succeeds.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "report.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    target = Path(path)
    if target.is_dir():  # os.replace would only say so after all the work
        raise IsADirectoryError(f"{target}: is a folder, not a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(target, ".tmp", lambda name: os.close(_create_file(name)))
    try:
        new_file_mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask
        yield tmp
        with open(tmp, "rb+") as handle:  # make the bytes durable before the rename
            os.fsync(handle.fileno())
        # Set the mode after writing: some writers (safetensors' save_file) make it 0600.
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode) if target.is_file() else new_file_mode)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`, to fill; it becomes `path` if the block succeeds.

    `path` must not exist yet (an empty folder is also replaced): an existing folder's files
    are never touched, so nothing in it is lost. The folder appears whole or not at all.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_sibling(target, ".tmp", lambda name: os.mkdir(name, 0o777))
    try:
        yield staging
        os.rename(staging, target)  # fails, rather than merges, if a non-empty folder is there
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _create_file(name: Path) -> int:
    # os.open applies the umask to 0o666, as open() does; tempfile.mkstemp would make it 0600.
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def _new_sibling(target: Path, suffix: str, create: Callable[[Path], object]) -> Path:
    """Create (exclusively) and return a hidden, unused name beside `target`."""
    absolute = Path(os.path.abspath(target))  # "." and ".." have no name of their own
    for _ in range(100):
        candidate = absolute.parent / f".{absolute.name}.{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{absolute.parent}: no free temporary name beside {absolute.name}")
