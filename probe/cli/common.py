"""What the command modules share: how a command is declared (help, examples, its handler),
the flag groups several commands take, an old flag's spelling, and list parsing."""
from __future__ import annotations

import argparse
from typing import Callable

from probe.errors import ProbeError, deprecated

Handler = Callable[[argparse.Namespace], int]


def command(sub, name: str, help: str, run: Handler, examples: list[str], note: str = "",
            description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand: its one-line ``help``, a ``description`` (default: the help), the
    ``examples`` shown under ``--help`` (and in docs/cli.md), and the handler ``run``."""
    p = sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "".join(f"  {e}\n" for e in examples) + (note and note + "\n"))
    p.set_defaults(run=run)
    return p


class Renamed(argparse.Action):
    """An old spelling of a flag: its value goes where the new flag's does, with one
    deprecation line (``probe: deprecated: --cell gru; write --cell-type gru``). Hidden
    from --help."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{option_string} {values}", f"{self.new} {values}")
        setattr(namespace, self.dest, values)


def source_flags(p: argparse.ArgumentParser, limit: int | None, limit_help: str) -> None:
    """--model and the text to read (--corpus | --text, --glob, --split, --limit): the same
    flags for every command that runs a model over text."""
    p.add_argument("--model", help="checkpoint, or a shipped model: lstm (default), gru, rnn")
    text_flags(p)
    p.add_argument("--split", default="test", help="split of a built-in corpus: train, val, test (default)")
    p.add_argument("--limit", type=int, default=limit, help=limit_help)


def device_flag(p: argparse.ArgumentParser) -> None:
    """--device: where the model runs (its weights and every tensor made for it)."""
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, mps")


def text_flags(p: argparse.ArgumentParser) -> None:
    """--corpus | --text, and --glob: where the text comes from."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="stdlib", help="built-in corpus: stdlib (the standard library's source, the default), "
                     "stdlib-prose (its docstrings and comments: for word-level models) or linux")
    src.add_argument("--text", help="a UTF-8 text file or a folder of them")
    p.add_argument("--glob", default="**/*", help="files to take from a --text folder (default **/*)")


def cluster_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--workers N | --scheduler ADDR: run on a Dask cluster (probe.analysis.cluster)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, metavar="N", help=f"start a local Dask cluster of N worker "
                   f"processes and {what}")
    g.add_argument("--scheduler", metavar="ADDR", help="the same on a running Dask cluster (its scheduler's "
                   "address, like tcp://10.0.0.5:8786); the workers must see the same folders at the same paths")


def names(value: str | None, flag: str) -> list[str] | None:
    """"c,h" -> ["c", "h"] (None when the flag is absent)."""
    if value is None:
        return None
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise ProbeError(f"{flag}: expected a comma-separated list, got {value!r}")
    return out


def numbers(value: str | None, flag: str) -> list[int] | None:
    """"0,1" -> [0, 1] (None when the flag is absent)."""
    out = names(value, flag)
    try:
        return None if out is None else [int(v) for v in out]
    except ValueError:
        raise ProbeError(f"{flag}: expected comma-separated numbers, got {value!r}") from None
