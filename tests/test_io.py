"""The one-place helpers: atomic writes (sgmagnet/io.py), the typed manifest (written and read by one class),
and the study's log archive (hpc/study_logs.py)."""
import json
import os

import pytest

from sgmagnet.io import write_json, write_text
from sgmagnet.shards import Manifest, read_manifest


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_json(str(p), {"x": 1})                      # the folder is made
    assert json.loads(p.read_text()) == {"x": 1}
    with pytest.raises(TypeError):
        write_json(str(p), {"x": object()})           # fails while serialising: the old file stays
    assert json.loads(p.read_text()) == {"x": 1}
    with pytest.raises(OSError):
        write_text(str(tmp_path / "sub"), "a folder cannot be replaced by a file")
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.json"]     # no temporary file left behind


def test_manifest_is_written_and_read_by_one_class(tiny_shards, tmp_path):
    """build writes manifest.json through Manifest.write; read back, it is the same object, and writing that
    again gives the same bytes (every field the builder writes is a field of the class)."""
    root, built = tiny_shards
    m = read_manifest(str(root))
    assert isinstance(built, Manifest) and json.loads(json.dumps(built.to_json())) == m.to_json()
    assert set(json.loads((root / "manifest.json").read_text())) == set(m.to_json())
    m.write(str(tmp_path))
    assert (tmp_path / "manifest.json").read_bytes() == (root / "manifest.json").read_bytes()
    assert m.levels == {"n": 38, "bottom_km": 0.0, "dz_km": 0.5} and m.ignore_label == 255 and len(m.bands) == 16


def _log(t0: float, steps: int) -> str:
    recs = [{"kind": "header", "step": 0, "time": t0}] + [{"kind": "train", "step": s, "loss": 1.0 / s,
                                                           "time": t0 + s} for s in range(1, steps + 1)]
    return "".join(json.dumps(r) + "\n" for r in recs)


def test_study_logs_pack_into_one_archive_and_read_back(tmp_path):
    from hpc.study_logs import ARCHIVE, StudyLogs, log_wall_s

    out = tmp_path / "study"
    for rel, (t0, n) in {"runs/a_s0/log.jsonl": (100.0, 5), "sweep/a_lr0.1/log.jsonl": (0.0, 3)}.items():
        (out / rel).parent.mkdir(parents=True)
        (out / rel).write_text(_log(t0, n) + '{"kind": "train", "ti')     # + a line cut short by a kill
    before = {rel: StudyLogs(str(out)).records(rel) for rel in ("runs/a_s0/log.jsonl", "sweep/a_lr0.1/log.jsonl")}
    assert log_wall_s(str(out / "runs/a_s0/log.jsonl")) == 5.0
    archive, n = StudyLogs(str(out)).pack()
    assert n == 2 and archive == str(out / ARCHIVE) and not list(out.glob("**/log.jsonl"))
    logs = StudyLogs(str(out))
    assert {rel: logs.records(rel) for rel in before} == before
    assert logs.wall_s("runs/a_s0/log.jsonl") == 5.0 and logs.wall_s("sweep/a_lr0.1/log.jsonl") == 3.0
    assert logs.records("runs/missing/log.jsonl") is None
    first = (out / ARCHIVE).read_bytes()
    assert StudyLogs(str(out)).pack() == (archive, 0) and (out / ARCHIVE).read_bytes() == first   # deterministic
    (out / "runs/b_s0").mkdir()
    (out / "runs/b_s0/log.jsonl").write_text(_log(0.0, 2))       # a later run: merged into the same archive
    assert StudyLogs(str(out)).pack()[1] == 1 and StudyLogs(str(out)).wall_s("runs/a_s0/log.jsonl") == 5.0
    assert StudyLogs(str(out)).wall_s("runs/b_s0/log.jsonl") == 2.0
