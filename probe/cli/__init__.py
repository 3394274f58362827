"""The ``probe`` command line: thin wrappers over the library, on top of every stage.

Each module here holds one command (or a few that belong together): ``add_parser(sub)``
declares its flags and examples right beside the handler ``run(args)`` it sets, which
opens the files, calls the library and prints what the library's ``report`` gives. The
library takes open objects (a ``Recording``, a model); paths are the command line's.

    train.py      probe train, probe sample            the model
    importer.py   probe import                         your own model, adapted and proven
    record.py     probe record                         its gates and states, to HDF5
    info.py       probe info                           what a file is
    analyze.py    probe analyze                        cells against features
    match.py      probe match                          where else a span's cells are on
    ablate.py     probe ablate                         does the model use a cell?
    patch.py      probe patch, probe circuit           what a cell carries, and what drives it
    gradients.py  probe gradients                      how far back the loss reaches
    readout.py    probe directions, dictionary, encode read-outs, stored as streams
    ngram.py      probe ngram, probe errors            the n-gram baseline
    output.py     probe render, export-lstmvis,        pages and LSTMVis projects
                  import-lstmvis

``python -m probe.cli.reference`` writes docs/cli.md from these parsers.
"""
from __future__ import annotations

import argparse
import sys

from probe.cli import (
    ablate,
    analyze,
    gradients,
    importer,
    info,
    match,
    ngram,
    output,
    patch,
    readout,
    record,
    train,
)
from probe.cli.common import Handler
from probe.errors import ProbeError

MODULES = (train, importer, info, record, analyze, ablate, patch, match, gradients, output, readout, ngram)


def parser() -> argparse.ArgumentParser:
    """The whole command line: one subcommand per handler of MODULES, in their order."""
    p = argparse.ArgumentParser(prog="probe", description="Look inside character-level recurrent "
                                "language models (LSTM, GRU, RNN), one cell at a time.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.add_parser(sub)
    return p


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name, in the order of ``probe --help``."""
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS: dict[str, Handler] = {name: p.get_default("run") for name, p in subparsers(parser()).items()}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ProbeError as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
