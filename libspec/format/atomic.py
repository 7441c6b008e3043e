"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Collection, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a plain open() would give a new file; mkstemp's 0600 would hide data from colleagues."""
    return 0o666 & ~_current_umask()


def default_dir_mode() -> int:
    """The mode a plain mkdir() would give a new directory (mkdtemp uses 0700)."""
    return 0o777 & ~_current_umask()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (POSIX needs the directory itself synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temp file next to `path`; on success fsync it and rename it over `path`.

    On any exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        _name_the_file(error, path, tmp_name)
        raise
    fsync_dir(path.parent)


def _name_the_file(error: BaseException, path: Path, tmp_name: str) -> None:
    """Make a failed write (ENOSPC, EFBIG, EIO) name the file being written, not a temp name or nothing."""
    if isinstance(error, OSError) and error.filename in (None, tmp_name):
        error.filename = str(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path for libraries that insist on writing by name; rename it into place after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, default_file_mode())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _name_the_file(error, path, tmp_name)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, keep_old: bool = False, drop: Collection[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder next to `path`; on success it replaces `path` as a whole.

    A reader sees the old folder or the complete new one. On any exception the staging folder is
    removed and `path` is left as it was. The caller fsyncs the files it writes. With `keep_old`,
    the files of the old folder that the staging folder lacks and `drop` does not name (paths
    relative to the folder) are carried into it just before the swap: only the caller's files change.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staging.chmod(default_dir_mode())
        yield staging
        if keep_old and path.is_dir():
            _carry_over(path, staging, set(drop))
        old = _move_aside(path)
        try:
            os.replace(staging, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _carry_over(old: Path, staging: Path, drop: set[str]) -> None:
    """Hard-link (else copy) every file of `old` that `staging` lacks and `drop` does not name into `staging`."""
    shutil.copymode(old, staging)
    for directory, subdirectories, files in os.walk(old):
        relative = Path(directory).relative_to(old)
        for name in list(subdirectories):
            target = staging / relative / name
            if os.path.lexists(target) and not target.is_dir():  # the new folder has a file there
                subdirectories.remove(name)
            elif Path(directory, name).is_symlink():
                files.append(name)  # a link to a folder is carried as the link itself
                subdirectories.remove(name)
            else:
                target.mkdir(exist_ok=True)
                shutil.copymode(Path(directory, name), target)
        for name in files:
            source, target = Path(directory, name), staging / relative / name
            if (relative / name).as_posix() in drop or os.path.lexists(target):
                continue
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
                continue
            try:
                os.link(source, target)
            except OSError:  # links not allowed here: copy
                shutil.copy2(source, target)
                with open(target, "rb") as handle:
                    os.fsync(handle.fileno())


def _move_aside(path: Path) -> Path | None:
    """Rename an existing `path` to a hidden sibling (deleted once its replacement is in place)."""
    if not path.exists():
        return None
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old.rmdir()
    os.replace(path, old)
    return old
