"""The README's Commands block names subcommands and flags that exist. (Its Use lines run as written in
test_dashboards.py, its job lines in test_platform_jobs.py.)"""
import argparse
import re

from platform_helpers import readme_block


def _subcommand(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The parser of ``ablab WORD [WORD]``: as deep as the words name subcommands."""
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def test_every_subcommand_and_flag_in_the_readme_s_commands_exists():
    from ablab.cli import _parser

    lines = [line.split("  #")[0] for line in readme_block("Commands")]
    assert len(lines) >= 12 and all(line.startswith("ablab ") for line in lines)
    for line in lines:
        words = line.split()[1:3]
        parser = _subcommand(_parser(), words)
        assert parser.prog.split()[1:2] == words[:1], f"README: {line}: no subcommand {words[0]!r}"
        known = {s for action in parser._actions for s in action.option_strings}
        unknown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)) - known
        assert not unknown, f"README: {line}: `{parser.prog}` has no {sorted(unknown)}"
