"""Faults injected into a running Slurm job array, and the recovery an operator runs: the helpers that
hpc/scale.py (a year's build) and tests/test_slurm.py (a short span in `make test`) share.

    tasks(job)                {array task id: state} of a job array (scontrol, so finished tasks are listed
                              while slurmctld remembers them: MinJobAge, 300 s by default)
    wait(pred, timeout)       poll until pred() is true
    cancel(job, task)         `scancel JOB_TASK`: the task ends CANCELLED wherever it is
    kill_python(job, task)    SIGKILL the task's Python process (as the OOM killer or a crash would): FAILED
    drain(node) / resume(node)  `scontrol update State=DRAIN|RESUME`: running tasks go on, pending ones wait
    node()                    the (single) node of the local cluster

Recovery is the build's own: every granule ends with a record written last, so re-submitting the same
`sgmagnet submit build --array K` redoes only the granules without one, and its merge job writes the
manifest (the merge job of the first submission never runs: its afterok dependency failed; `cancel_job`
removes it).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time


def _run(*cmd: str) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60).stdout


def tasks(job: str) -> dict[int, str]:
    """{array task id: JobState} of array `job` (a pending remainder '3-7' counts each id)."""
    out = {}
    for line in _run("scontrol", "-o", "show", "job", str(job)).splitlines():
        m_state = re.search(r"\bJobState=(\S+)", line)
        m_task = re.search(r"\bArrayTaskId=(\S+)", line)
        if not (m_state and m_task):
            continue
        for part in m_task.group(1).split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            for t in range(int(lo), int(hi or lo) + 1):
                out[t] = m_state.group(1)
    return out


def job_state(job: str) -> str | None:
    m = re.search(r"\bJobState=(\S+)", _run("scontrol", "-o", "show", "job", str(job)))
    return m.group(1) if m else None


def wait(pred, timeout: float, what: str, poll: float = 0.5):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(poll)


def cancel(job: str, task: int):
    _run("scancel", f"{job}_{task}")


def cancel_job(job: str):
    _run("scancel", str(job))


def task_pids(job: str, task: int) -> list[int]:
    """PIDs of the Python processes running array task `task` of `job` (found by their Slurm environment)."""
    want = {b"SLURM_ARRAY_JOB_ID=" + str(job).encode(), b"SLURM_ARRAY_TASK_ID=" + str(task).encode()}
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            if b"python" not in cmd.split(b"\0")[0] or b"submitit" not in cmd:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            pids.append(int(d))
    return pids


def kill_python(job: str, task: int) -> list[int]:
    pids = task_pids(job, task)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def node() -> str:
    return _run("sinfo", "-h", "-N", "-o", "%N").split()[0]


def node_state() -> str:
    return _run("sinfo", "-h", "-N", "-o", "%T").strip()


def drain(name: str, reason: str = "fault-injection"):
    _run("scontrol", "update", f"NodeName={name}", "State=DRAIN", f"Reason={reason}")


def resume(name: str):
    _run("scontrol", "update", f"NodeName={name}", "State=RESUME")


def task_log_evidence(folder: str, job: str, task: int) -> list[str]:
    """The scheduler's lines about task `task` of array `job` in its submitit log (srun's 'Killed', 'Job step
    aborted', ...): what happened to it, also after slurmctld has forgotten the task (MinJobAge)."""
    import glob

    lines = []
    for f in sorted(glob.glob(os.path.join(folder, f"{job}_{task}", "*_log.err"))):
        with open(f, errors="replace") as fh:
            lines += [x.strip() for x in fh if x.startswith(("srun:", "slurmstepd:"))]
    return lines


def finished(states: dict[int, str]) -> bool:
    return bool(states) and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
                                for s in states.values())
