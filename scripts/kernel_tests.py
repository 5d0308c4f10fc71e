"""Run tests/test_kernels.py with pytest when it is installed, else with a small stand-in that knows the
pytest features those tests use (parametrize, skipif, autouse fixtures, raises, skip, fail).

The lent GPU machine has PyTorch and Triton but maybe not pytest, and no network to install it; this
is how `make gpu-check` runs the kernel tests natively on CUDA there. Exit code 0 = all passed.
    PYTHONPATH=. python3 scripts/kernel_tests.py [-k SUBSTRING]
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import re
import sys
import time
import traceback
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests", "test_kernels.py")


class Skipped(Exception):
    pass


class Failed(AssertionError):
    pass


def _stand_in() -> types.ModuleType:
    """A module named pytest with the subset of the API the kernel tests use."""
    m = types.ModuleType("pytest")

    def parametrize(names, values):
        def deco(f):
            f.__dict__.setdefault("_params", []).append(([n.strip() for n in names.split(",")], list(values)))
            return f
        return deco

    def skipif(cond, reason=""):
        def deco(f):
            if cond:
                f._skip = reason
            return f
        return deco

    def fixture(*args, autouse=False, **kw):
        def deco(f):
            f._autouse = autouse
            return f
        return deco(args[0]) if args and callable(args[0]) else deco

    @contextlib.contextmanager
    def raises(exc, match=None):
        try:
            yield
        except exc as e:
            if match and not re.search(match, str(e)):
                raise Failed(f"{type(e).__name__}({e}) does not match {match!r}")
            return
        raise Failed(f"did not raise {exc}")

    def skip(msg=""):
        raise Skipped(msg)

    def fail(msg=""):
        raise Failed(msg)

    m.mark = types.SimpleNamespace(parametrize=parametrize, skipif=skipif)
    m.fixture, m.raises, m.skip, m.fail = fixture, raises, skip, fail
    return m


def _cases(f):
    """(id, kwargs) for every combination of the function's parametrize lists."""
    params = getattr(f, "_params", [])
    axes = [[(names, v if len(names) > 1 else (v,)) for v in vals] for names, vals in params]
    for combo in itertools.product(*axes):
        kw, ids = {}, []
        for names, v in combo:
            kw.update(zip(names, v))
            ids.append("-".join(str(x) for x in v))
        yield "[" + "-".join(ids) + "]" if ids else "", kw


def run_stand_in(pattern: str) -> int:
    sys.modules["pytest"] = _stand_in()
    sys.path.insert(0, os.path.dirname(TESTS))
    sys.path.insert(0, ROOT)
    if not os.environ.get("TRITON_INTERPRET") and not __import__("torch").cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    mod = importlib.import_module("test_kernels")
    autouse = [v for v in vars(mod).values() if callable(v) and getattr(v, "_autouse", False)]
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    t0 = time.time()
    for name, f in list(vars(mod).items()):
        if not (name.startswith("test_") and callable(f)) or (pattern and pattern not in name):
            continue
        for cid, kw in _cases(f):
            tid = f"{name}{cid}"
            try:
                if getattr(f, "_skip", None):
                    raise Skipped(f._skip)
                for a in autouse:
                    a()
                f(**kw)
                counts["passed"] += 1
            except Skipped as e:
                counts["skipped"] += 1
                print(f"SKIPPED {tid}: {e}")
            except Exception:  # noqa: BLE001 - report every failing case, go on with the others
                counts["failed"] += 1
                print(f"FAILED {tid}\n{traceback.format_exc()}")
    print(f"kernel tests (stand-in runner): {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped in {time.time() - t0:.1f}s")
    return 1 if counts["failed"] or not counts["passed"] else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pattern = argv[argv.index("-k") + 1] if "-k" in argv else ""
    force = "--stand-in" in argv
    try:
        if force:
            raise ImportError
        import pytest  # noqa: F401
    except ImportError:
        return run_stand_in(pattern)
    return pytest.main(["-q", "-rs", TESTS, "-p", "no:cacheprovider"] + (["-k", pattern] if pattern else []))


if __name__ == "__main__":
    sys.exit(main())
