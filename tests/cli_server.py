"""`python -m sgmagnet.cli ARGV`, forked from a process that has imported the heavy modules once.

The bad-input table runs the command line ~140 times, and each cold start imports torch, xarray and the
project (1.5-2.5 s on 2 cores) before it can refuse an argument. This server imports them once; for each
request it forks a child that does what the interpreter does for `python -m sgmagnet.cli`: a fresh
`__main__` run of the module (runpy), its own working directory, stdin from /dev/null, stdout and stderr
into files, the exit code of SystemExit (or 1 and a traceback for an uncaught exception), the atexit
handlers, flushed streams. Each command is still its own process: nothing it changes reaches the next.

The real cold start stays tested elsewhere (test_readme, test_exit, test_build and others run `sgmagnet` itself).

Protocol (one JSON object per line): request {"argv": [...], "cwd": DIR, "out": FILE, "err": FILE};
replies {"pid": PID} when the child starts and {"code": EXIT} when it ends (negative: killed by a signal).
"""
from __future__ import annotations

import importlib
import json
import os
import sys

PRELOAD = ("numpy", "torch", "xarray", "netCDF4", "h5py", "yaml", "webdataset", "sgmagnet.cli", "sgmagnet.build",
           "sgmagnet.config", "sgmagnet.train.trainer", "sgmagnet.evaluate", "sgmagnet.predict",
           "sgmagnet.synth.archive", "sgmagnet.inspect")


def _child(req: dict):
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        os.setpgrp()                         # the client can end the command and whatever it started
        os.chdir(req["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["out"]), (2, req["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = [os.path.join(os.path.dirname(importlib.import_module("sgmagnet").__file__), "cli.py"),
                    *req["argv"]]
        sys.path[0] = os.getcwd()            # as `python -m` puts the working directory first
        sys.modules.pop("sgmagnet.cli", None)   # preloaded for its imports; runpy runs it afresh as __main__
        try:
            runpy.run_module("sgmagnet.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def serve():
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        out.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), file=out, flush=True)


class Client:
    """The test side: `run(argv, cwd, timeout)` -> (returncode, stdout, stderr), like subprocess.run."""

    def __init__(self, env: dict, root: str):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert json.loads(self.proc.stdout.readline()).get("ready"), "cli_server did not start"

    def _reply(self, timeout: float | None):
        import select

        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("cli_server ended")
        return json.loads(line)

    def run(self, argv, cwd, timeout: float = 300):
        import signal
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cli-") as d:
            out, err = os.path.join(d, "out"), os.path.join(d, "err")
            self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd), "out": out,
                                              "err": err}) + "\n")
            self.proc.stdin.flush()
            pid = self._reply(60)["pid"]
            r = self._reply(timeout)
            if r is None:
                os.killpg(pid, signal.SIGKILL)
                self._reply(60)
                raise subprocess.TimeoutExpired(argv, timeout)
            with open(out) as f1, open(err) as f2:
                return subprocess.CompletedProcess(argv, r["code"], f1.read(), f2.read())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
