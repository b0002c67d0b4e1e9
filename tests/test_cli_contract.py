"""The contract every command line keeps (port.command): dispatch, error line, exit statuses, --help.

Each tool module exposes ``build_tool()`` (a :class:`port.command.Tool`) and ``main(argv)``. The bad
inputs below are cheap: they fail before any model is loaded.
"""

from __future__ import annotations

import argparse
import importlib

import pytest

from port.command import Exit, Tool, comma_list, error_line
from port.errors import CaffeError, ToolError, UsageError

TOOLS = ["port", "mfv", "legacy_caffe", "parity"]
CLI_MODULE = {
    "port": "port.cli",
    "mfv": "mfv.cli",
    "legacy_caffe": "legacy_caffe.cli",
    "parity": "parity.cli",
}

#: Per tool, a command line that is bad input found only when the command runs (not by argparse).
BAD_INPUT = {
    "port": ["inspect", "--prototxt", "/nonexistent/deploy.prototxt"],
    "mfv": ["layers", "--model", "no.such.model"],
    "legacy_caffe": ["goldens", "--prototxt", "/nonexistent/deploy.prototxt"],
    "parity": ["run", "--prototxt", "/nonexistent/deploy.prototxt", "--references", "numpy64"],
}


def _cli(tool: str):
    if tool == "mfv":
        pytest.importorskip("torchvision")
    return importlib.import_module(CLI_MODULE[tool])


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_is_built_on_the_skeleton(tool):
    built = _cli(tool).build_tool()
    assert isinstance(built, Tool)
    assert built.name == tool and built.commands


@pytest.mark.parametrize("tool", TOOLS)
def test_help_of_every_subcommand_explains_every_option(tool, capsys):
    cli = _cli(tool)
    built = cli.build_tool()
    for name, parser in built.parsers.items():
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        assert f"python -m {tool} {name}" in capsys.readouterr().out
        for action in parser._actions:  # argparse keeps no public list of a parser's options
            if action.dest != "help":
                assert action.help, f"{tool} {name} {action.option_strings or action.dest}: no help"


@pytest.mark.parametrize("tool", TOOLS)
def test_usage_errors_exit_2_with_the_tool_error_line(tool, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(tool).main(["--no-such-option"])
    assert exc.value.code == Exit.BAD_INPUT
    assert f"\n{tool}: error: " in "\n" + capsys.readouterr().err


@pytest.mark.parametrize("tool", TOOLS)
def test_bad_input_exits_2_with_one_error_line(tool, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        status = _cli(tool).main(BAD_INPUT[tool])
    except SystemExit as exc:  # a usage error (the subcommand's usage, then the line)
        status = exc.code
    err = capsys.readouterr().err
    assert status == Exit.BAD_INPUT
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err


# --- the skeleton itself, on a tool made for the test ---------------------------------------


def _demo(outcome):
    tool = Tool("demo", "A demonstration.", bad_input=(KeyError,), interrupted="state kept")
    tool.add_command("go", lambda args: outcome(args), help="run the outcome")
    p = tool.add_command("list", lambda args: print(args.names), help="print a list")
    p.add_argument("--names", type=comma_list(["a", "b"]), default=["a"], help="names a, b")
    return tool


def _raise(exc):
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize(
    ("outcome", "status", "line"),
    [
        (lambda a: None, 0, None),
        (lambda a: Exit.CHECK_FAILED, 1, None),
        (lambda a: Exit.INCOMPLETE, 3, None),
        (_raise(ToolError("no such file x")), 2, "demo: error: no such file x"),
        (_raise(CaffeError("bad", path="n.prototxt", line=3)), 2, "demo: error: n.prototxt:3: bad"),
        (_raise(KeyError("k")), 2, "demo: error: 'k'"),
        (_raise(KeyboardInterrupt()), 130, "demo: interrupted; state kept"),
    ],
)
def test_skeleton_maps_outcomes_to_statuses(outcome, status, line, capsys):
    assert _demo(outcome).main(["go"]) == status
    err = capsys.readouterr().err
    assert (err.splitlines()[0] == line) if line else err == ""


def test_skeleton_usage_error_prints_usage_then_the_line(capsys):
    with pytest.raises(SystemExit) as exc:
        _demo(_raise(UsageError("--x needs --y"))).main(["go"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m demo go") and "demo: error: --x needs --y" in err


def test_skeleton_reports_any_other_exception_as_a_bug_with_status_70(capsys):
    assert _demo(lambda a: 1 / 0).main(["go"]) == Exit.BUG == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "ZeroDivisionError" in err
    assert err.splitlines()[-1].startswith("demo: error: internal error (ZeroDivisionError")
    assert "this is a bug, please report it" in err


def test_bug_status_is_none_of_the_others():
    assert Exit.BUG not in {Exit.OK, Exit.CHECK_FAILED, Exit.BAD_INPUT, Exit.INCOMPLETE}
    assert Exit.BUG != Exit.INTERRUPTED


@pytest.mark.parametrize("tool", TOOLS)
def test_a_planted_bug_exits_70_in_every_tool(tool, capsys, monkeypatch):
    """A command that raises what bad input never raises (here a KeyError from a planted bug)."""
    cli = _cli(tool)
    real_build = cli.build_tool

    def build_with_bug():
        built = real_build()

        def bug(args):
            raise KeyError("planted")

        built.commands[BAD_INPUT[tool][0]] = bug
        return built

    monkeypatch.setattr(cli, "build_tool", build_with_bug)
    assert cli.main(BAD_INPUT[tool]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'planted'" in err
    assert f"{tool}: error: internal error (KeyError: 'planted'); this is a bug" in err


def test_sigterm_unwinds_like_ctrl_c_in_a_tool_that_asks_for_it(capsys):
    import os
    import signal

    tool = Tool("demo", "A demonstration.", sigterm=True, interrupted="state kept")
    tool.add_command("go", lambda a: os.kill(os.getpid(), signal.SIGTERM), help="terminate")
    before = signal.getsignal(signal.SIGTERM)
    assert tool.main(["go"]) == Exit.INTERRUPTED
    assert capsys.readouterr().err == "demo: interrupted; state kept\n"
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command


def test_debug_variable_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("DEMO_DEBUG", "1")
    with pytest.raises(ToolError):
        _demo(_raise(ToolError("x"))).main(["go"])


def test_comma_lists(capsys):
    tool = _demo(lambda a: None)
    assert tool.main(["list", "--names", "b, a,"]) == 0
    assert capsys.readouterr().out.strip() == "['b', 'a']"
    with pytest.raises(SystemExit):
        tool.main(["list", "--names", "a,c"])
    assert (
        "demo: error: argument --names: invalid choice 'c' (choose from a, b)"
        in capsys.readouterr().err
    )
    assert comma_list(item=int)("0,1,2") == [0, 1, 2]
    with pytest.raises(argparse.ArgumentTypeError):
        comma_list(item=int)("0,x")


def test_error_line_indents_continuation_lines():
    assert error_line("t", "first\nsecond") == "t: error: first\n  second"


def test_a_subcommand_is_registered_once():
    tool = Tool("demo", "d")
    tool.add_command("go", lambda a: None, help="h")
    with pytest.raises(ValueError, match="twice"):
        tool.add_command("go", lambda a: None, help="h")
