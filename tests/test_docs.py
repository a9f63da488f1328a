"""The README documents every command and option, and holds the commands CI runs."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from vistag.cli import COMMANDS, build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


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


def test_every_option_is_in_the_readme():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                assert re.search(rf"`[^`]*{re.escape(option)}\b", README), f"{name} {option} undocumented"


def test_readme_holds_the_ci_commands():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "ci:setup" in ci and "ci:test" in ci
    assert "<!-- ci:setup -->\n```bash\n" in README and "<!-- ci:test -->\n```bash\n" in README
