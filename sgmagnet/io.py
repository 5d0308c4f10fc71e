"""Atomic file writes: the one helper every JSON, text and marker file goes through.

A reader (another rank, a resumed job, `sgmagnet evaluate` on a live run) sees the old file or the new one,
never half of one: the bytes go to a temporary name in the same folder (unique per process: two writers may
race), are flushed to disk, and the file is renamed over the target. A failure removes the temporary file
and leaves the target as it was.
"""
from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj, *, indent: int | None = 1, sort_keys: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))
