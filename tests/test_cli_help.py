"""Every option of every `sgmagnet` command has help text, and the help shows its default (issue 16)."""
from __future__ import annotations

import argparse
from unittest import mock

import pytest

import sgmagnet.cli as cli


def _root_parser():
    grabbed = {}

    def grab(self, *a, **k):
        grabbed["p"] = self
        raise SystemExit(0)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab), pytest.raises(SystemExit):
        cli.main(["--version"])
    return grabbed["p"]


def _walk(p, name="sgmagnet"):
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for n, sp in act.choices.items():
                yield from _walk(sp, f"{name} {n}")
        elif act.help != argparse.SUPPRESS and not isinstance(act, (argparse._HelpAction, argparse._VersionAction)):
            yield name, p, act


def test_every_option_has_help_and_shows_its_default():
    seen, missing = 0, []
    for name, parser, act in _walk(_root_parser()):
        seen += 1
        flag = "/".join(act.option_strings) or act.dest
        text = parser._get_formatter()._get_help_string(act)
        if not (act.help or "").strip():
            missing.append(f"{name} {flag}: no help")
        d = act.default
        shows = act.option_strings and not act.required and d is not None and d is not False and d != [] and d != ()
        if shows and "default" not in text:
            missing.append(f"{name} {flag}: default {d!r} not shown in {text!r}")
    assert seen > 80 and not missing, "\n".join(missing)


def test_build_and_submit_build_share_their_options():
    """One definition (cli.add_build_arguments) for both: same flags, defaults and help."""
    cmds = {}
    for name, parser, act in _walk(_root_parser()):
        if name in ("sgmagnet build", "sgmagnet submit build"):
            cmds.setdefault(name, {})["/".join(act.option_strings) or act.dest] = (act.default, act.help)
    local, remote = cmds["sgmagnet build"], cmds["sgmagnet submit build"]
    shared = set(local) & set(remote)
    assert {"--ahi", "--window-min", "--split-days", "--gap-days", "--split-anchor", "--shard-maxcount"} <= shared
    assert all(local[k] == remote[k] for k in shared)
