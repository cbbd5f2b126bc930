"""State files written atomically: a reader (another worker, another process)
sees the old content or the new, never half of either."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` to a temporary file beside ``path`` (unique to this process and
    thread), set ``mode`` if given, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        partial.write_text(text, encoding="utf-8")
        if mode is not None:
            partial.chmod(mode)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
