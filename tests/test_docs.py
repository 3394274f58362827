"""Every command is documented: help text, an example, and a mention in the README."""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py

from probe.cli import COMMANDS, parser
from probe.recording import h5format

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_has_help_an_example_and_a_readme_entry():
    readme = (ROOT / "README.md").read_text()
    cmds = subcommands()
    assert set(cmds) == set(COMMANDS)
    for name, sub in cmds.items():
        assert sub.description or sub.format_help().strip(), name
        assert sub.epilog and f"probe {name}" in sub.epilog, f"{name}: no example in --help"
        assert f"probe {name}" in readme, f"README does not mention `probe {name}`"


def test_every_flag_has_help_text():
    for name, sub in subcommands().items():
        for action in sub._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"probe {name} {action.option_strings[0]}: no help text"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_same_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    head = "\n".join(lines[:25])
    assert "pip install -e . && bokeh serve apps/cells" in head
    test_cmd = "pip install -e '.[test]' && python -m pytest -q"
    assert test_cmd in head
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_format_doc_names_every_attribute_dataset_and_stream(recording_path):
    doc = (ROOT / "docs" / "recording-format.md").read_text()
    with h5py.File(recording_path) as f:  # the list in h5format is what the recorder writes
        assert set(f.attrs) == set(h5format.ATTRIBUTES)
    for name in [*h5format.ATTRIBUTES, *h5format.TABLES, "layers/{k}/{s}"]:
        assert f"`{name}`" in doc, name
    for kind, streams in h5format.STREAMS.items():
        for s in streams:
            assert f"| `{s}` | {h5format.DESCRIPTION[s]}" in doc, (kind, s)
    assert "MEASUREMENT_TABLE" not in doc and "BATCHED_DIFF" not in doc, "fill in the measurements"
