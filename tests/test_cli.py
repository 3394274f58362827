"""The command line as a whole (probe/cli/): every parser sits beside its handler, docs/cli.md
is what the parsers say, one vocabulary in the flags (old spellings still work, with one
deprecation line), and a command that writes creates the folders it writes into."""
from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path

import h5py
import pytest

from probe.cli import COMMANDS, MODULES, main, parser, reference, subparsers
from probe.lm.model import load_model
from probe.recording.reader import open_recording

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_md_is_generated_from_the_parsers():
    """Regenerate: an edited flag without `python -m probe.cli.reference > docs/cli.md` fails."""
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == reference.render()


def test_the_reference_names_every_command_flag_and_example():
    doc = reference.render()
    for name, p in subparsers(parser()).items():
        section = doc.split(f"\n## probe {name}\n", 1)[1].split("\n## probe ", 1)[0]
        assert f"[`probe {name}`](#probe-{name.lower()})" in doc
        for action in p._actions:
            if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert f"| `{reference.flag(action)}` |" in section, (name, action.dest)
        examples = [line[2:] for line in p.epilog.splitlines()[1:] if line.startswith("  ")]
        assert examples and all(f"$ {e}\n" in section for e in examples), name


def test_each_command_is_handled_in_the_module_that_declares_it():
    modules = {m.__name__ for m in MODULES}
    assert len(COMMANDS) == 19 and len(set(COMMANDS.values())) == 19  # one handler per command
    for name, run in COMMANDS.items():
        module = importlib.import_module(run.__module__)
        assert run.__module__ in modules, name
        sub = argparse.ArgumentParser().add_subparsers()
        module.add_parser(sub)
        assert name in sub.choices, f"{name} is handled in {run.__module__} but declared elsewhere"
    for m in [*MODULES, reference, importlib.import_module("probe.cli.common")]:
        assert len(inspect.getsource(m).splitlines()) <= 400, m.__name__


def visible_flags() -> dict[str, dict[str, argparse.Action]]:
    return {name: {o: a for a in p._actions for o in a.option_strings if a.help is not argparse.SUPPRESS}
            for name, p in subparsers(parser()).items()}


def test_one_vocabulary_in_the_flags():
    flags = visible_flags()
    for name, own in flags.items():
        assert "--cell" not in own and "--on" not in own, name  # the type is --cell-type; h or c a --stream
        if "--features" in own:  # a list of labels, never a number
            assert own["--features"].type is None and own["--features"].metavar == "F,F", name
        for flag in ("--cells", "--clamp"):
            if flag in own:
                assert "L:S:U" in own[flag].metavar, (name, flag)
    assert flags["train"]["--cell-type"].choices == ["lstm", "gru", "rnn"]
    assert flags["dictionary"]["--size"].type is int
    assert flags["ablate"]["--stream"].choices == ["h", "c"]
    for name in ("render", "match", "dictionary"):  # one cell's or stream's place: --layer and --stream
        assert {"--layer", "--stream"} <= set(flags[name]), name


@pytest.mark.parametrize("argv, new, dest, value", [
    (["train", "--out", "m.pt", "--cell", "rnn"], "--cell-type rnn", "cell", "rnn"),
    (["dictionary", "r.h5", "--layer", "1", "--stream", "h", "--out", "d.pt", "--features", "48"],
     "--size 48", "size", 48),
    (["ablate", "--layer", "0", "--on", "c"], "--stream c", "stream", "c"),
    (["record", "--out", "r.h5", "--streams", "3"], "--batch 3", "batch", 3),
])
def test_an_old_flag_means_the_new_one_with_one_deprecation_line(argv, new, dest, value, capsys):
    args = parser().parse_args(argv)
    assert getattr(args, dest) == value
    old = f"{argv[-2]} {argv[-1]}"
    assert capsys.readouterr().err == f"probe: deprecated: {old}; write {new}\n"
    new_argv = argv[:-2] + new.split()
    assert getattr(parser().parse_args(new_argv), dest) == value
    assert capsys.readouterr().err == ""
    assert argv[-2] not in visible_flags()[argv[0]]  # hidden from --help
    assert f"{argv[-2]} " not in reference.render().split(f"## probe {argv[0]}\n", 1)[1].split("\n## ", 1)[0]


def test_train_writes_into_a_folder_it_creates_and_takes_the_old_cell_flag(tmp_path, text, capsys):
    src = tmp_path / "code.py"
    src.write_text(text * 10)
    out = tmp_path / "runs" / "deeper" / "gru.pt"  # a fresh clone has no runs/
    small = ["--text", str(src), "--units", "8", "--embedding", "4", "--batch", "4", "--seq", "16",
             "--steps", "4", "--eval-every", "2", "--quiet"]
    assert main(["train", *small, "--out", str(out), "--cell", "gru"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert captured.err == "probe: deprecated: --cell gru; write --cell-type gru\n"
    assert f"\nsaved {out}: validation " in captured.out
    assert load_model(out).cell == "gru"
    assert sorted(p.name for p in out.parent.iterdir()) == ["gru.pt", "gru.resume.pt"]  # no temporaries
    before = out.read_bytes()
    assert main(["train", *small, "--out", str(out), "--cell-type", "lstm"]) == 1  # never silently replaced
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_export_lstmvis_creates_its_folder_and_never_writes_half(recording_path, tmp_path, capsys):
    out = tmp_path / "lstmvis" / "stdlib-test"
    assert main(["export-lstmvis", str(recording_path), str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"wrote {out}/ (lstm.yml, states.hdf5, chars.hdf5, chars.dict)\n"
    assert sorted(p.name for p in out.iterdir()) == ["chars.dict", "chars.hdf5", "lstm.yml", "states.hdf5"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["stdlib-test"]  # the temporary is gone
    with open_recording(recording_path) as rec, h5py.File(out / "states.hdf5") as f:
        T = len(rec)
        assert f["layer1_c"][T - 1, 7] == rec.unit(0, "c", 7)[T - 1]  # the last position, the last unit
        assert f["layer2_h"][0, 0] == rec.unit(1, "h", 0)[0]
    (out / "lstm.yml").write_text("mine")
    assert main(["export-lstmvis", str(recording_path), str(out), "--quiet"]) == 1
    assert capsys.readouterr().err == f"probe: error: {out}: folder exists and is not empty; pass --force to overwrite\n"
    assert (out / "lstm.yml").read_text() == "mine"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export-lstmvis", str(recording_path), str(blocker / "x"), "--quiet"]) == 1
    assert capsys.readouterr().err == (f"probe: error: {blocker / 'x'}: cannot create a folder inside "
                                       f"{blocker}: it is a file\n")


def test_a_failed_write_leaves_neither_a_file_nor_a_temporary(recording_path, tmp_path, capsys):
    out = tmp_path / "pages" / "cell.html"
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "8",
                 "--out", str(out)]) == 1  # unit 8 of 8: the check fails before anything is written
    assert "no unit 8 (units are 0..7)" in capsys.readouterr().err
    assert not out.parent.exists()  # nothing written, not even the folder
    assert main(["render", str(recording_path), "--layer", "0", "--stream", "c", "--unit", "7",
                 "--out", str(out)]) == 0  # the last valid unit
    assert sorted(p.name for p in out.parent.iterdir()) == ["cell.html"]
