"""One command-line convention for every benchmark in hpc/bench (the bad-input contract of sgmagnet itself):
options parsed by sgmagnet's Parser (a bad option: one line, exit 2, no usage block), counts and sizes checked
before any work (`positive`, `count0`, `int_list`), and `run(main)`, which turns a bad input met later -- a
folder that is not a shard set, a junk checkpoint -- into one line and exit 2 instead of a traceback.
A measurement that fails (a model that cannot run at a size) makes the benchmark exit 1 after its table."""
from __future__ import annotations

import argparse
import sys

from sgmagnet.cli import Parser, _count0, _positive_int

positive = _positive_int
count0 = _count0


def int_list(s: str) -> list[int]:
    """Comma-separated positive integers ('1,2')."""
    try:
        v = [int(x) for x in s.split(",")]
    except ValueError:
        v = []
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return v


def parser(prog: str, doc: str, raw: bool = False) -> Parser:
    kw = {"formatter_class": argparse.RawDescriptionHelpFormatter} if raw else {}
    return Parser(prog=prog, description=doc if raw else doc.split("\n\n")[0], **kw)


def run(main, prog: str) -> int:
    """main() -> its exit code; a ValueError/FileNotFoundError (bad input) -> one line on stderr, exit 2."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"{prog}: error: {' '.join(str(e).split())}\n")
        return 2
