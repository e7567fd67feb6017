"""Files written whole or not at all: the one atomic write (a temp file beside the target, then
os.replace), so a reader never sees half a file and a crash leaves the old one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

LOW_SPACE_BYTES = 1024**2  # a write that fails with less than this free on its file system: disk full


def disk_full(e: BaseException) -> OSError | None:
    """The ENOSPC OSError in `e`'s chain (a write that found the disk full), or None."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def as_disk_full(e: BaseException, path: Path | str) -> OSError | None:
    """`e` as an ENOSPC OSError naming `path` when the write failed for want of space: torch.save
    says only `unexpected pos` or `file write failed`, so a failed write with less than
    LOW_SPACE_BYTES free on `path`'s file system counts too. None when space was not the reason."""
    if (found := disk_full(e)) is not None:
        return found
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if free < LOW_SPACE_BYTES else None


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> None:
    """Calls `write(tmp)` on a temp file in `path`'s directory, then moves it onto `path`. A write
    that runs out of space raises OSError(ENOSPC) naming `path`; `path` keeps its old content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except Exception as e:
        full = as_disk_full(e, path)  # before the temp file goes (it holds the space)
        if full is None or full is e:
            raise
        raise full from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path | str, data: Any) -> None:
    """`data` as indented JSON at `path`, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2)))


def sqlite_problem(path: Path | str) -> str | None:
    """Why the sqlite file at `path` cannot be used (not a database, truncated, malformed), or None.
    Opened read-only, so a check never creates or changes it; `PRAGMA quick_check` reads every page."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            found = db.execute("PRAGMA quick_check").fetchall()
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):  # in use by a writer: not damage
            return None
        return f"damaged ({e.__class__.__name__}: {e})"
    except sqlite3.Error as e:
        return f"damaged ({e.__class__.__name__}: {e})"
    if found != [("ok",)]:
        return f"damaged ({'; '.join(str(r[0]) for r in found[:2])})"
    return None


def atomic_savez(path: Path | str, arrays: dict[str, Any], *, compressed: bool = False) -> None:
    """np.savez (or savez_compressed) of `arrays` onto `path` through atomic_write."""
    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append .npz to a bare path
            save(f, **arrays)

    atomic_write(path, write)
