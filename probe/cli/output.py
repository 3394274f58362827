"""``probe render``, ``probe export-lstmvis`` and ``probe import-lstmvis``: a recording
written out for a browser, as one cell's coloured text or as an LSTMVis project, and an
LSTMVis project read in as a recording."""
from __future__ import annotations

import argparse

from probe.cli.common import command, names
from probe.files import atomic, check_target
from probe.output.export import export_lstmvis
from probe.output.render import render_recording
from probe.recording import h5format
from probe.recording.lstmvis import KINDS, import_lstmvis
from probe.recording.reader import open_recording


def add_render(sub) -> None:
    v = command(sub, "render", "write one cell's coloured text as a standalone HTML page", run_render, [
        "probe render recordings/stdlib-test.h5 --layer 0 --stream c --unit 89 --out cell.html",
        "probe render rec.h5 --layer 0 --stream f --unit 7 --start 5000 --stop 9000 --out f7.html --force"],
        note="the --out folder is created if missing")
    v.add_argument("recording", help="a .h5 recording, or a folder of shards")
    v.add_argument("--layer", type=int, required=True, help="layer, 0 = nearest the input")
    v.add_argument("--stream", required=True, help="one of i f g o c h (c is coloured by tanh(c)), or a "
                   "derived stream")
    v.add_argument("--unit", type=int, required=True, help="unit within the stream")
    v.add_argument("--start", type=int, default=0, help="first position (default 0)")
    v.add_argument("--stop", type=int, default=None, help="end position (default start + 3000)")
    v.add_argument("--out", required=True, help="HTML file to write")
    v.add_argument("--force", action="store_true", help="overwrite an existing file")


def run_render(a: argparse.Namespace) -> int:
    out = check_target(a.out, a.force)
    with open_recording(a.recording) as rec:
        page = render_recording(rec, a.layer, a.stream, a.unit, a.start, a.stop)
    with atomic(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"wrote {out}: layer {a.layer}, stream {a.stream}, unit {a.unit}, {len(page) / 1e3:.0f} kB")
    return 0


def add_export(sub) -> None:
    x = command(sub, "export-lstmvis", "write a recording as an LSTMVis project folder", run_export, [
        "probe export-lstmvis recordings/stdlib-test.h5 lstmvis/stdlib-test --streams c,h"],
        note="the folder (and its parents) is created if missing")
    x.add_argument("recording", help="a probe recording (.h5), or a folder of shards")
    x.add_argument("outdir", help="folder to write (lstm.yml, states.hdf5, chars.hdf5, chars.dict; "
                   "words.hdf5 and words.dict for a token recording)")
    x.add_argument("--streams", default="c,h", metavar="S,S", help="streams to export (default c,h)")
    x.add_argument("--force", action="store_true", help="replace a non-empty folder")
    x.add_argument("--quiet", action="store_true", help="no progress bar")


def run_export(a: argparse.Namespace) -> int:
    streams = tuple(names(a.streams, "--streams"))
    with open_recording(a.recording) as rec:
        out = export_lstmvis(rec, a.outdir, streams, force=a.force, progress=not a.quiet)
        stem = "chars" if rec.char_level else "words"
    print(f"wrote {out}/ (lstm.yml, states.hdf5, {stem}.hdf5, {stem}.dict)")
    return 0


def add_import(sub) -> None:
    m = command(sub, "import-lstmvis", "read an LSTMVis project folder into a recording (no model)",
                run_import, [
                    "probe import-lstmvis lstmvis/ptb --out recordings/ptb.h5",
                    "probe import-lstmvis lstmvis/stdlib-test --out back.h5 --force"],
                note="see docs/lstmvis.md for what maps to what")
    m.add_argument("folder", help="the project folder, holding lstm.yml")
    m.add_argument("--out", required=True, help="recording to write (.h5)")
    m.add_argument("--tokens", choices=KINDS, default=None,
                   help="what a position is: words (joined by spaces, <eos> and </s> as line ends), chars "
                   "or vocab (concatenated); default the project's word_sequence.tokens, else words")
    m.add_argument("--compression", choices=h5format.COMPRESSIONS, default=h5format.COMPRESSIONS[0],
                   help=f"filter of the streams (default {h5format.COMPRESSIONS[0]})")
    m.add_argument("--force", action="store_true", help="overwrite an existing recording")
    m.add_argument("--quiet", action="store_true", help="no progress bar")


def run_import(a: argparse.Namespace) -> int:
    out = import_lstmvis(a.folder, a.out, force=a.force, tokens=a.tokens, compression=a.compression,
                         progress=not a.quiet)
    with open_recording(out) as rec:
        derived = f", {len(rec.derived)} derived" if rec.derived else ""
        print(f"wrote {out}: {len(rec):,} {rec.unit_name}s, layers {' '.join(str(k) for k in rec.layer_ids)}, "
              f"streams {' '.join(rec.streams)}{derived}")
    return 0


def add_parser(sub) -> None:
    add_render(sub)
    add_export(sub)
    add_import(sub)
