"""Every command a person types: each --help opens with one line for users and states every default, and the
installed commands (pyproject.toml [project.scripts]) exist and answer --help under their own names."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval_service.cli import build_parser as retrieval_parser
from sjft.demo.__main__ import build_parser as demo_parser
from sjft.demo.data import build_parser as demo_data_parser
from trainer.cli import build_parser as trainer_parser

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {
    "python -m retrieval_service": retrieval_parser,
    "python -m trainer": trainer_parser,
    "python -m sjft.demo": demo_parser,
    "python -m sjft.demo.data": demo_data_parser,
}


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command line, parser) for each top-level parser and, recursively, each of its subcommands."""
    found = []
    todo = [(name, make()) for name, make in TOP_LEVEL.items()]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return sorted(found)


PARSERS = every_parser()


def test_every_subcommand_is_walked():
    names = {name for name, _ in PARSERS}
    assert {"python -m trainer run", "python -m trainer ablate", "python -m trainer convert-weights"} <= names
    assert {f"python -m retrieval_service {c}" for c in ("build", "serve", "verify")} <= names


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
def test_help_opens_with_one_line_for_users(name, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    summary = parser.description or ""
    assert summary and "\n" not in summary and summary.endswith("."), f"{name}: {summary!r}"
    assert len(summary) <= 78 and "``" not in summary, f"{name}: not one plain line: {summary!r}"
    after_usage = parser.format_help().split("\n\n")[1]
    assert after_usage == summary  # the first thing after the usage lines, on one line


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
def test_every_option_says_its_default(name, parser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        assert action.help, f"{name} {flag}: no help"
        if action.nargs == 0 or action.required:  # a switch (off unless given), or a value one must give
            continue
        text = formatter._expand_help(action)
        assert "default" in text.lower(), f"{name} {flag}: the help does not state the default: {text!r}"


def test_an_option_with_a_value_shows_it():
    ablate = dict(PARSERS)["python -m trainer ablate"]
    assert "(default: 3)" in ablate.format_help()  # --rounds and --num-seeds


@pytest.mark.parametrize(
    ("command", "module"), [("sjft-retrieval", "retrieval_service"), ("sjft-train", "trainer")]
)
def test_installed_commands_answer_help_under_their_own_name(command, module):
    script = Path(sys.executable).parent / command  # pip install (-e) . puts it beside the interpreter
    assert script.is_file(), f"{command} is not installed: pip install -e . ([project.scripts])"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.startswith(f"usage: {command} ")
    via_module = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=True,
        cwd=ROOT,
    )
    assert via_module.stdout.startswith(f"usage: python -m {module} ")
    # The same parser under both names: everything after the first usage line is identical.
    assert done.stdout.split("\n\n", 1)[1] == via_module.stdout.split("\n\n", 1)[1]


def test_a_usage_error_names_the_installed_command():
    script = Path(sys.executable).parent / "sjft-train"
    done = subprocess.run([str(script), "ablate", "--bogus"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("sjft-train ablate: error:")
