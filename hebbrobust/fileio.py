"""Files written whole or not at all: the one atomic write (a temp file beside the target, then
os.replace), so a reader never sees half a file and a crash leaves the old one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> None:
    """Calls `write(tmp)` on a temp file in `path`'s directory, then moves it onto `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path | str, data: Any) -> None:
    """`data` as indented JSON at `path`, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2)))
