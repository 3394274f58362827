"""A directions spec as a linear read-out: checked, laid out in input blocks, applied.

A spec of kind "directions" (``probe.readout.directions.fit`` makes it) reads the
concatenated input streams ``[layer, stream], …`` of a recording, standardised, and gives
one unit per feature: ``standardise(x) @ W + b``. ``check_spec`` checks one; ``blocks``
and ``widths`` cut its D input columns into the streams they come from; ``pick_names``
checks the features asked for against those it has; ``transform`` applies it to input
rows, ``apply`` to a recording's rows.
"""
from __future__ import annotations

import numpy as np

from probe.errors import ProbeError
from probe.recording import derived, transforms


def check_spec(spec) -> None:
    """A one-line error unless ``spec`` is a well-formed directions spec."""
    derived.check(spec, "spec")
    transforms.check_directions(spec)


def widths(spec: dict, units: int) -> list[int]:
    """Columns of each input block: the inputs split D evenly (every stream has ``units``)."""
    n = len(spec["inputs"])
    D = len(spec["mean"])
    if D != n * units:
        raise ProbeError(f"the spec reads {D} columns from {n} streams; here each stream has {units} units "
                         f"({n * units} columns)")
    return [units] * n


def blocks(sizes: list[int]) -> list[slice]:
    """The columns of consecutive blocks of these sizes, as slices."""
    edges = np.cumsum([0, *sizes]).tolist()
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def pick_names(wanted, available: list[str], what: str) -> list[str]:
    """``wanted`` checked against ``available`` (None: all of them), duplicates dropped;
    ``what`` introduces the list in the error ("available are", "the spec's directions are")."""
    if wanted is None:
        return list(available)
    wanted = [wanted] if isinstance(wanted, str) else list(dict.fromkeys(wanted))
    if not wanted:
        raise ProbeError("no features named")
    for name in wanted:
        if name not in available:
            raise ProbeError(f"unknown feature {name!r}: {what} {', '.join(map(str, available)) or 'none'}")
    return wanted


def transform(spec: dict, x: np.ndarray, chunk: int = transforms.CHUNK) -> np.ndarray:
    """Each feature's predicted value at input rows x [n, D] (as ``derived.read_inputs``
    gives them): ``derived.standardise`` then x @ W + b, float32 [n, F] (about 0..1 for a
    binary feature, the count for column or depth), ``chunk`` rows at a time."""
    check_spec(spec)
    return transforms.directions(spec, x, chunk)


def apply(spec: dict, rec, start: int = 0, stop: int | None = None, chunk: int = transforms.CHUNK) -> np.ndarray:
    """``transform`` of a recording's rows [start, stop): float32 [n, F]. One line if the
    recording lacks an input stream of the spec or its streams have other widths."""
    check_spec(spec)
    derived.check_widths(spec, derived.width(rec, spec["inputs"]), rec.path)
    start, stop, _ = slice(start, stop).indices(len(rec))
    parts = [transform(spec, derived.read_inputs(rec, spec["inputs"], a, min(a + chunk, stop)))
             for a in range(start, stop, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, len(spec["unit_names"])), np.float32)
