"""Small file helpers shared by every writer: atomic writes, so nothing is half-written, and the
checks that keep an output from replacing what the user had."""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync, then rename.

    Args:
        path: the final file name; its folder must exist.
        text: the UTF-8 content.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file and no temporary
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON atomically (see ``atomic_write_text``)."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a UTF-8 JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Args:
        a: one existing path.
        b: the other, on the same file system.

    Returns:
        True when swapped; False where the call is not available (other systems, old kernels,
        file systems without support), so the caller falls back to two renames.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, dest: Path, aside: Path) -> None:
    """Put the complete folder ``new`` at ``dest``; an old ``dest`` is deleted only after that.

    An existing ``dest`` is swapped with ``new`` in one atomic step where the OS allows it
    (``exchange``), so at every moment ``dest`` is the old complete folder or the new one, and
    a plain reader of ``dest`` never misses it. Elsewhere the old one is first renamed to
    ``aside`` (then ``dest`` is missing for an instant; ``recover_aside`` puts it back after a
    process died there).

    Args:
        new: the finished folder, a sibling of ``dest``.
        dest: where it goes.
        aside: the sibling name the fallback parks the old ``dest`` under.
    """
    if dest.is_dir():
        if exchange(new, dest):
            shutil.rmtree(new, ignore_errors=True)  # now the old folder
        else:
            shutil.rmtree(aside, ignore_errors=True)  # stale: dest exists, so it is not the only copy
            os.replace(dest, aside)
            os.replace(new, dest)
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(new, dest)
    fsync_dir(dest.parent)


def recover_aside(dest: Path, aside: Path) -> None:
    """Undo what a ``replace_dir`` fallback killed between its two renames left: ``aside`` is put
    back when ``dest`` is missing (it is then the only copy), else deleted.

    Args:
        dest: the folder ``replace_dir`` was replacing.
        aside: the name it parked the old folder under.
    """
    if not aside.is_dir():
        return
    if dest.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(aside, dest)


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symbolic links and ``..`` resolved).

    Args:
        path: any path (it need not exist).
        folder: the folder.
    """
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
