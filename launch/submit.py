"""`sgmagnet submit train|build`: Slurm jobs through submitit (or `--cluster local|debug` on a laptop).

train: one task per GPU (or `--tasks-per-node` on CPU nodes); each task maps submitit's JobEnvironment
onto RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT and runs the trainer (sgmagnet.dist.init_distributed
picks them up). Preemption and time-outs: Slurm signals the tasks (SIGTERM then SIGUSR2 on preemption,
SIGUSR2 `signal_delay_s` before the time limit); the trainer saves a checkpoint at the next step
boundary on every rank (Trainer's Preemption hook), then rank 0 hands over to submitit's handler, which
calls `TrainJob.checkpoint()` -> a DelayedSubmission of the same job with --resume, pickles it and
requeues the job (`slurm_max_num_timeout` bounds the number of time-out requeues). Every rank of the
requeued job resumes from the checkpoint folder's `latest`.

build: the archive builder as one job whose tasks are MPI ranks (`srun --mpi=pmix`), or as a job array
over contiguous chunks of granules (`--array K`) followed by a dependent job that merges the manifest.

User-supplied values that reach the sbatch script (names, partition, account, qos, constraint, paths,
time, extra `#SBATCH` flags, setup lines) are validated against strict full-string patterns: no
newline, quote or shell metacharacter can reach a script line, extra flags come from an allow-list
(nothing that overrides a validated value or changes identity or environment), and `--setup` lines are
single lines without command substitution, pipes or separators. `--dry-run` prints exactly what would
be submitted: the job script, or the array script and the merge job's script.

Defaults that shape every job (one place): SIGNAL_DELAY_S, the `--requeue` flag for training, no
`--wckey`, `--cpus-per-task` = data.workers + 1.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time

SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+,=@%-]*")          # names, partitions, accounts, ... (fullmatch)
SAFE_PATH = re.compile(r"[A-Za-z0-9._/~+,=@%-]+")
EXTRA = re.compile(r"--([a-z][a-z0-9-]*)(=([A-Za-z0-9._:+,=@%/-]+))?")
SETUP = re.compile(r"[A-Za-z0-9 ._/~+,=@%:${}\"'-]+")
SIGNAL_DELAY_S = 120            # USR2 this long before the time limit (the sbatch templates use USR2@120 too)
# extra `#SBATCH` flags a user may add with --sbatch; everything else is refused (identity, environment,
# output paths, and every value the other options set and validate)
ALLOWED_EXTRA = {"begin", "comment", "core-spec", "cpu-freq", "distribution", "exclude", "exclusive", "gpu-bind",
                 "gres", "hint", "licenses", "mail-type", "mail-user", "mem-per-gpu", "network", "nice", "nodelist",
                 "prefer", "reservation", "spread-job", "switches", "thread-spec", "tmp", "mcs-label"}


class SubmitError(ValueError):
    pass


def check_name(value: str, what: str) -> str:
    if value is None or not SAFE.fullmatch(value):
        raise SubmitError(f"{what} {value!r} is not allowed: use letters, digits and ._:+,=@%- only")
    return value


def check_path(value: str, what: str) -> str:
    if not value or not SAFE_PATH.fullmatch(value):
        raise SubmitError(f"{what} {value!r} is not allowed: paths may hold letters, digits and ._/~+,=@%- only")
    return value


TIME_FORMATS = (   # every format sbatch --time accepts -> (days, hours, minutes, seconds) groups
    (re.compile(r"(\d+)"), ("m",)), (re.compile(r"(\d+):(\d+)"), ("m", "s")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("h", "m", "s")), (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("d", "h", "m")), (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("d", "h", "m", "s")),
)


def time_minutes(value: str) -> int:
    """Any sbatch time format (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> minutes (rounded up)."""
    for rx, parts in TIME_FORMATS:
        m = rx.fullmatch(value or "")
        if m:
            v = dict(zip(parts, (int(x) for x in m.groups())))
            if len(parts) > 1 and (v.get("s", 0) > 59 or (v.get("m", 0) > 59 and parts[0] != "m")
                                   or (v.get("h", 0) > 23 and "d" in v)):
                raise SubmitError(f"--time {value!r}: a field is out of range (seconds/minutes < 60, hours < 24 "
                                  f"after days)")
            total = v.get("d", 0) * 1440 + v.get("h", 0) * 60 + v.get("m", 0) + (1 if v.get("s", 0) else 0)
            if total < 1:
                raise SubmitError(f"--time {value!r} must be at least one second")
            return total
    raise SubmitError(f"--time {value!r} must be MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")


def extra_flags(flags: list[str]) -> dict:
    """['--mail-type=END', '--exclusive'] -> {'mail_type': 'END', 'exclusive': True} (allow-listed, validated)."""
    out = {}
    for f in flags or []:
        m = EXTRA.fullmatch(f)
        if not m:
            raise SubmitError(f"--sbatch {f!r} is not allowed: use --name or --name=value with a plain value")
        if m.group(1) not in ALLOWED_EXTRA:
            raise SubmitError(f"--sbatch {f!r} is not allowed: extra flags may be one of "
                              f"{', '.join(sorted(ALLOWED_EXTRA))} (the others are set by their own options, or "
                              f"change identity or environment)")
        out[m.group(1).replace("-", "_")] = m.group(3) if m.group(2) else True
    return out


def setup_lines(lines: list[str]) -> list[str]:
    """--setup lines (module load, conda activate, source, export): one plain command each."""
    for ln in lines or []:
        if not SETUP.fullmatch(ln) or "$(" in ln or not ln.strip():
            raise SubmitError(f"--setup {ln!r} is not allowed: one command per --setup, without newlines, "
                              f"backticks, $( ), pipes, redirections or ; & separators")
    return list(lines or [])


def rendezvous_env():
    """Map submitit's JobEnvironment onto the variables torch.distributed reads."""
    import submitit

    from sgmagnet.dist import slurm_master_port

    env = submitit.JobEnvironment()
    os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(slurm_master_port(env.job_id)))
    return env


class TrainJob:
    """The callable submitit pickles. Checkpointable: `checkpoint()` returns the same job with resume."""

    def __init__(self, config: str | None, overrides: list[str], deepspeed: str | None = None, resume: bool = False):
        self.config, self.overrides, self.deepspeed, self.resume = config, list(overrides), deepspeed, resume

    def argv(self) -> list[str]:
        a = ["train", "--no-progress"] + (["--config", self.config] if self.config else [])
        a += (["--deepspeed", self.deepspeed] if self.deepspeed else []) + (["--resume"] if self.resume else [])
        return a + self.overrides

    def __call__(self):
        from sgmagnet import dist as hdist
        from sgmagnet.config import load_config
        from sgmagnet.train import run_training

        rendezvous_env()
        submitit_handler = signal.getsignal(signal.SIGUSR2)     # submitit's checkpoint-and-requeue
        cfg = load_config(self.config, self.overrides)
        cfg.train.progress = False
        if self.deepspeed:
            cfg.train.deepspeed = self.deepspeed
        trainer, summary, preempted = run_training(cfg, resume=self.resume)
        if preempted:
            hdist.shutdown()
            if trainer.env.rank == 0 and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)     # pickles self.checkpoint(), requeues, exits
            time.sleep(120)                                 # other ranks: wait to be requeued by Slurm
            sys.exit(-1)
        hdist.shutdown()
        return summary

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides, self.deepspeed, resume=True))


class BuildJob:
    """One MPI build (all tasks are ranks), one array chunk, or the manifest merge."""

    def __init__(self, cfg_dict: dict, chunk: tuple[int, int] | None = None, merge_only: bool = False):
        self.cfg_dict, self.chunk, self.merge_only = cfg_dict, chunk, merge_only

    def __call__(self):
        from hpc.mpi_build import build, build_chunk, merge
        from sgmagnet.build import BuildConfig

        cfg = BuildConfig(**self.cfg_dict)
        if self.merge_only:
            return {"counts": merge(cfg).counts}
        if self.chunk is not None:
            return build_chunk(cfg, *self.chunk)
        r = build(cfg)
        return {"rank": r["rank"], "stats": r["stats"]}


def build_task(cfg_dict: dict, chunk=None, merge_only: bool = False):
    """Module-level function for map_array (one chunk per array task)."""
    return BuildJob(cfg_dict, tuple(chunk) if chunk else None, merge_only)()


def make_executor(a, name: str, cpus_per_task: int = 1, requeue: bool = False):
    import submitit

    folder = check_path(a.folder, "--folder")
    ex = submitit.AutoExecutor(folder=os.path.join(folder, "%j"), cluster=a.cluster,
                               slurm_max_num_timeout=a.max_requeue)
    gpus = a.gpus_per_node
    tasks = a.tasks_per_node or max(1, gpus)
    params = dict(name=check_name(name, "job name"), nodes=a.nodes, tasks_per_node=tasks,
                  cpus_per_task=cpus_per_task, timeout_min=time_minutes(a.time))
    if a.mem_gb:
        params["mem_gb"] = a.mem_gb
    if gpus:
        params["gpus_per_node"] = gpus
    slurm = {"slurm_partition": check_name(a.partition, "--partition"), "slurm_signal_delay_s": a.signal_delay}
    for k in ("account", "qos", "constraint"):
        if getattr(a, k) is not None:
            slurm[f"slurm_{k}"] = check_name(getattr(a, k), f"--{k}")
    extra = {**extra_flags(a.sbatch), **({"requeue": True} if requeue else {})}
    if extra:
        slurm["slurm_additional_parameters"] = extra
    if a.setup:
        slurm["slurm_setup"] = setup_lines(a.setup)
    if a.cluster in (None, "slurm"):
        params.update(slurm)
    ex.update_parameters(**params)
    inner = getattr(ex, "_executor", None)
    if inner is not None and hasattr(inner, "_make_submission_file_text"):
        inner.parameters["wckey"] = None      # submitit would force --wckey=submitit; sites may reject it
    return ex


def dry_run_script(ex, map_count: int | None = None) -> str:
    """The sbatch script submitit would submit (for a job array of `map_count` tasks when given)."""
    inner = getattr(ex, "_executor", ex)
    if not hasattr(inner, "_make_submission_file_text"):
        return f"# cluster {ex.cluster!r}: no sbatch script (jobs run as local processes)\n"
    saved = dict(inner.parameters)
    if map_count:
        inner.parameters["map_count"] = map_count
    try:
        return inner._make_submission_file_text(inner._submitit_command_str, "dryrun")
    finally:
        inner.parameters.clear()
        inner.parameters.update(saved)


def submit_train(a) -> int:
    if a.config:
        check_path(a.config, "--config")
        if not os.path.isfile(a.config):
            raise SubmitError(f"--config {a.config!r} is not a file")
    if a.deepspeed:
        check_path(a.deepspeed, "--deepspeed")
    for o in a.overrides:
        if "\n" in o or "\x00" in o:
            raise SubmitError(f"override {o!r} contains a newline or NUL")
    from sgmagnet.config import load_config

    cfg = load_config(a.config, a.overrides)  # validate before anything is queued
    need = cfg.data.workers + 1
    cpus = a.cpus_per_task or need
    if cpus < need:
        raise SubmitError(f"--cpus-per-task {cpus} leaves no core for data.workers={cfg.data.workers} DataLoader "
                          f"workers (needs >= {need}); raise it, or lower data.workers")
    if getattr(a, "resume", False):
        if a.deepspeed:
            cfg.train.deepspeed = os.path.abspath(a.deepspeed)
        from sgmagnet.train.state import check_resume

        check_resume(cfg.train.run_dir, cfg, a.nodes * (a.tasks_per_node or a.gpus_per_node or 1))
    job = TrainJob(a.config and os.path.abspath(a.config), a.overrides, a.deepspeed and os.path.abspath(a.deepspeed),
                   resume=getattr(a, "resume", False))
    ex = make_executor(a, a.name or f"sgmagnet-{cfg.model.name}", cpus_per_task=cpus, requeue=True)
    if a.dry_run:
        print(dry_run_script(ex), end="")
        print(f"# python -m sgmagnet.cli {' '.join(job.argv())}   (run in each task by submitit)")
        return 0
    j = ex.submit(job)
    print(f"submitted job {j.job_id}: logs {os.path.join(a.folder, str(j.job_id))}, run folder {cfg.train.run_dir}")
    if a.wait:
        print(j.results()[0])   # rank 0's summary (every task returns one)
    return 0


def submit_build(a, cfg) -> int:
    """Submit the build of `cfg` (a BuildConfig with absolute paths, from the same options as `sgmagnet build`)."""
    for p, flag in ((a.ahi, "--ahi"), (a.cloudsat, "--cloudsat"), (a.earthcare, "--earthcare"), (a.out, "--out")):
        if p is not None:
            check_path(p, flag)
    from dataclasses import asdict

    d = asdict(cfg)
    ex = make_executor(a, a.name or "sgmagnet-build", cpus_per_task=a.cpus_per_task or 1)
    slurm = a.cluster in (None, "slurm")
    if a.array:
        ex.update_parameters(nodes=1, tasks_per_node=1)
        if a.dry_run:
            print("# --- job array script ---")
            print(dry_run_script(ex, map_count=a.array), end="")
            if slurm:
                ex.update_parameters(slurm_additional_parameters={**extra_flags(a.sbatch),
                                                                  "dependency": "afterok:ARRAY_JOB_ID"})
            print("# --- merge job script (ARRAY_JOB_ID = the array's job id, known at submission) ---")
            print(dry_run_script(ex), end="")
            return 0
        jobs = ex.map_array(build_task, [d] * a.array, [(i, a.array) for i in range(a.array)])
        ids = ",".join(j.job_id for j in jobs)
        base = jobs[0].job_id.split("_")[0]
        if slurm:
            ex.update_parameters(slurm_additional_parameters={**extra_flags(a.sbatch), "dependency": f"afterok:{base}"})
        else:
            [j.result() for j in jobs]
        m = ex.submit(BuildJob(d, merge_only=True))
        print(f"submitted array {base} ({ids}) and merge job {m.job_id} (after the array succeeds)")
        if a.wait:
            print(m.result())
        return 0
    if slurm:
        ex.update_parameters(slurm_srun_args=["--mpi=pmix"])
    if a.dry_run:
        print(dry_run_script(ex), end="")
        return 0
    j = ex.submit(BuildJob(d))
    print(f"submitted MPI build job {j.job_id} ({a.nodes} node(s) x {a.tasks_per_node or 1} ranks)")
    if a.wait:
        print(j.results())
    return 0


def _count(minimum: int):
    import argparse

    def parse(s):
        try:
            v = int(s)
        except ValueError:
            v = minimum - 1
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {s!r}")
        return v
    return parse


def add_common(p):
    p.add_argument("--nodes", type=_count(1), default=1, help="number of nodes (1)")
    p.add_argument("--gpus-per-node", type=_count(0), default=0, help="GPUs per node; one task per GPU (0 = CPU nodes)")
    p.add_argument("--tasks-per-node", type=_count(0), default=0, help="tasks per node (default: GPUs per node, or 1)")
    p.add_argument("--cpus-per-task", type=_count(1), default=None,
                   help="CPU cores per task (default: training data.workers + 1; build 1)")
    p.add_argument("--mem-gb", type=_count(0), default=0, help="memory per node in GB (0 = the partition's default)")
    p.add_argument("--partition", required=True, help="Slurm partition")
    p.add_argument("--time", required=True, help="wall-clock limit HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--account", help="Slurm account to charge")
    p.add_argument("--qos", help="Slurm quality of service")
    p.add_argument("--constraint", help="Slurm node feature constraint (e.g. a100)")
    p.add_argument("--sbatch", action="append", default=[], metavar="--FLAG[=VALUE]",
                   help="extra sbatch flag (repeatable) from an allow-list, e.g. --sbatch=--exclusive, "
                        "--sbatch=--mail-type=END")
    p.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                   help="a line run before the job starts (repeatable), e.g. --setup 'module load cuda/12.4' "
                        "--setup 'source /path/venv/bin/activate'")
    p.add_argument("--name", help="job name")
    p.add_argument("--folder", default="slurm_logs", help="submitit log folder; each job writes FOLDER/<job id>/")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="default: Slurm when sbatch is on PATH, else local processes")
    p.add_argument("--max-requeue", type=_count(0), default=3, help="requeues after time-outs (slurm_max_num_timeout)")
    p.add_argument("--signal-delay", type=_count(1), default=SIGNAL_DELAY_S,
                   help=f"seconds before the limit Slurm sends USR2 ({SIGNAL_DELAY_S})")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
