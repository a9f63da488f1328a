"""The README documents every command and option, and holds the commands CI runs."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from vistag.cli import COMMANDS, build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
#: Options every command takes (``--json``: every command that prints results), documented once in
#: the introduction of "## Commands".
COMMON = ("--home", "--db", "--device", "--engine", "-v", "--verbose", "--json")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_has_help_and_a_readme_section():
    subs = _subparsers()
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        assert sub.description, name
        assert f"### `vistag {name}" in README, name


def _section(heading: str) -> str:
    """README text from the line starting with ``heading`` to the next ``##`` or ``###`` heading."""
    start = README.index("\n" + heading) + 1
    end = re.compile(r"^#{2,3} ", re.M).search(README, start + len(heading))
    return README[start : end.start() if end else len(README)]


def _code_spans(text: str) -> list[str]:
    """The contents of the fenced code blocks and of the inline code spans of Markdown ``text``."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return blocks + re.findall(r"`([^`]+)`", rest)


def _documented(option: str, text: str) -> bool:
    """Whether ``option`` is written in a code span of ``text`` (``--store`` is not ``--store-top``)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(option)}(?![\w-])")
    return any(pattern.search(span) for span in _code_spans(text))


def test_every_option_is_in_its_commands_section():
    missing = []
    for name, sub in _subparsers().items():
        section = _section(f"### `vistag {name}")
        for action in sub._actions:
            missing += [
                f"{name} {o}"
                for o in action.option_strings
                if o not in (*COMMON, "-h", "--help")
                if not _documented(o, section)
            ]
    assert not missing, f"options missing from their command's README section: {missing}"


def test_common_options_are_in_the_commands_introduction():
    intro = _section("## Commands")
    subs = _subparsers()
    for option in COMMON:
        assert any(option in sub._option_string_actions for sub in subs.values()), option
        assert _documented(option, intro), f"{option} not in the introduction of ## Commands"


def test_readme_holds_the_ci_commands():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "ci:setup" in ci and "ci:test" in ci
    assert "<!-- ci:setup -->\n```bash\n" in README and "<!-- ci:test -->\n```bash\n" in README
