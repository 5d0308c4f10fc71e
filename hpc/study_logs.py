"""A study's training logs: each run's log.jsonl, read from the loose file or from the study's archive.

The logs are the evidence behind the study's wall times and convergence table, and most of its lines;
`hpc/study.py --pack-logs` moves the loose ones of an --out folder into one archive, <out>/logs.tar.gz
(members named by their path under <out>, e.g. runs/unet_s0/log.jsonl), which every reader here then uses.
The archive is deterministic (sorted members, fixed times), so packing the same logs twice gives the same
bytes.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import tarfile

ARCHIVE = "logs.tar.gz"


class StudyLogs:
    def __init__(self, out: str):
        self.out = out
        self._packed = None

    def _archive(self) -> dict:
        if self._packed is None:
            self._packed = {}
            path = os.path.join(self.out, ARCHIVE)
            if os.path.exists(path):
                try:
                    with tarfile.open(path) as t:
                        for m in t.getmembers():
                            if m.isfile():
                                self._packed[m.name] = t.extractfile(m).read().decode("utf-8")
                except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as e:
                    raise ValueError(f"{path}: not a readable log archive ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:120]}); restore it from git") from None
        return self._packed

    def text(self, rel: str) -> str | None:
        """The log at <out>/<rel>: the loose file if there is one, else the archive's member, else None."""
        path = os.path.join(self.out, rel)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        return self._archive().get(rel)

    def records(self, rel: str) -> list[dict] | None:
        """The log's records; a line cut short by a kill is skipped (its content is not known)."""
        text = self.text(rel)
        if text is None:
            return None
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wall_s(self, rel: str) -> float | None:
        recs = self.records(rel)
        return None if recs is None else wall_s(recs)

    def pack(self) -> tuple[str, int]:
        """Move every loose log.jsonl under <out> into the archive (merged with what it holds); returns (archive
        path, logs added). The loose files are removed only after the new archive is in place."""
        loose = sorted(os.path.relpath(p, self.out) for p in glob.glob(os.path.join(self.out, "**", "log.jsonl"),
                                                                       recursive=True))
        members = dict(self._archive())
        for rel in loose:
            with open(os.path.join(self.out, rel), encoding="utf-8") as f:
                members[rel] = f.read()
        path = os.path.join(self.out, ARCHIVE)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as t:
                for name in sorted(members):
                    data = members[name].encode("utf-8")
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    t.addfile(info, io.BytesIO(data))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        for rel in loose:
            os.remove(os.path.join(self.out, rel))
        self._packed = members
        return path, len(loose)


def wall_s(records: list[dict]) -> float | None:
    """Training seconds a run's log records over all its sessions: each (re)start writes a header, and a
    session lasts from its header to its last record. (The study's own clock sees only the last session of a
    run that was preempted and resumed.) None when there is no header."""
    total, start, last = 0.0, None, None
    for rec in records:
        if rec.get("kind") == "header":
            if start is not None:
                total += last - start
            start = last = rec["time"]
        elif start is not None and "time" in rec:
            last = rec["time"]
    return round(total + (last - start), 1) if start is not None else None


def log_wall_s(path: str) -> float | None:
    """wall_s of the log file at `path` (None when it is missing)."""
    if not os.path.exists(path):
        return None
    return StudyLogs(os.path.dirname(path)).wall_s(os.path.basename(path))
