"""Writing files so that a crash never leaves half of one, and refusing paths that cannot be written.

Every file autokd writes goes to a temporary name in its own folder and is renamed into place
(`os.replace`, atomic on POSIX), so a reader sees the old file or the new one, never a mix::

    write_text(path, text)                    # also write_bytes, torch_save
    write_text(path, text, check=read_back)   # `check(temporary)` runs before the rename
    with replace_folder(folder) as staging:   # a whole folder: fill `staging`; the previous
        ...                                   # folder is removed only once the new one is in place

`check_writable` answers before any work is done: a path whose folder is a file, is missing
(when it must exist) or cannot be written is refused on one line naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from autokd.errors import AutokdError

__all__ = ["OutputPathError", "check_writable", "replace_folder", "torch_save", "write_bytes", "write_text"]


class OutputPathError(AutokdError):
    """A path autokd was asked to write cannot be written (its folder is a file, missing or read-only)."""


def write_bytes(path: str | Path, payload: bytes, *, check: Callable[[Path], None] | None = None) -> Path:
    """Write `payload` to `path` atomically; `check(temporary)` may refuse it before the rename."""
    return _write(Path(path), lambda stream: stream.write(payload), check)


def write_text(path: str | Path, text: str, *, check: Callable[[Path], None] | None = None) -> Path:
    """Write `text` (UTF-8) to `path` atomically; `check(temporary)` may refuse it before the rename."""
    return write_bytes(path, text.encode(), check=check)


def torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    return _write(Path(path), lambda stream: torch.save(obj, stream), None)


@contextmanager
def replace_folder(folder: str | Path) -> Iterator[Path]:
    """A new, empty folder beside `folder` to fill; on success it becomes `folder`, on error it is removed.

    Folders cannot be swapped in one rename: the previous `folder` is moved aside first and
    deleted only after the new one is in place, so a crash leaves one of them, never neither.
    """
    folder = Path(folder)
    _make_folder(folder.parent)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.building")
    try:
        os.mkdir(staging, 0o777)  # the umask applies, as for any folder the user makes
    except OSError as error:
        raise OutputPathError(f"{folder}: cannot write: {_reason(error, folder.parent)}") from None
    try:
        yield staging
        previous = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.previous")
        if folder.exists():
            folder.rename(previous)
        staging.rename(folder)
        if previous.exists():
            shutil.rmtree(previous)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_writable(path: str | Path, what: str, *, folder: bool = False, create_parents: bool = True) -> None:
    """Refuse, on one line naming `what` and `path`, a file (or with `folder`, a folder) that cannot be written.

    Missing folders on the way are fine when `create_parents` (they would be made), as long as
    the nearest existing one is a writable folder; that is checked by creating and removing a
    file in it, which also holds for root, read-only mounts and ACLs. Writes nothing that stays.
    """
    path = Path(path).expanduser()
    target = path if folder else path.parent
    if path.exists() and not folder:
        if path.is_dir():
            raise OutputPathError(f"{what}: cannot write {path}: it is a folder, expected a file")
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{what}: cannot write {path}: the file is read-only")
    existing = target
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what}: cannot write {path}: {existing} is a file, not a folder")
    if existing != target and not create_parents:
        raise OutputPathError(f"{what}: cannot write {path}: folder {target} does not exist")
    probe = existing / f".autokd-probe-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise OutputPathError(f"{what}: cannot write {path}: {_reason(error, existing)}") from None
    probe.unlink()


def _write(path: Path, fill: Callable[[Any], Any], check: Callable[[Path], None] | None) -> Path:
    _make_folder(path.parent)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
    except OSError as error:
        raise OutputPathError(f"{path}: cannot write: {_reason(error, path.parent)}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            fill(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if check is not None:
            check(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"{folder}: cannot make the folder: {_reason(error, folder)}") from None


def _reason(error: OSError, folder: Path) -> str:
    """Why `folder` cannot be written, in words."""
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), folder)
        return f"{blocker} is a file, not a folder"
    if error.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM) or error.errno == errno.ENOENT and folder.is_dir():
        return f"folder {folder} is not writable"  # ENOENT in an existing folder: a pseudo file system (/proc)
    if error.errno == errno.ENOENT:
        return f"folder {folder} does not exist"
    return error.strerror or type(error).__name__
