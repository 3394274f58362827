"""Features a user defines: a regex (``NAME=REGEX``), or a function of the text.

``regex_feature`` is 1 on every character inside a match of the pattern (``re.MULTILINE``,
over the whole text); a custom feature's function takes the text and returns T numbers.
``features.compute`` takes both beside the built-ins (``regex=``, ``custom=``).
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from probe.errors import ProbeError
from probe.text.spans import mask


def parse_feature_args(specs: list[str]) -> dict[str, str]:
    """Turn CLI strings ``NAME=REGEX`` into ``{name: regex}`` (the regex may contain '=').

    >>> parse_feature_args(["digit=[0-9]", "assign=\\\\s=\\\\s"])
    {'digit': '[0-9]', 'assign': '\\\\s=\\\\s'}
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, eq, pattern = spec.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ProbeError(f"feature {spec!r}: expected NAME=REGEX, e.g. digit=[0-9]")
        if name in out:
            raise ProbeError(f"feature {name!r} given twice")
        out[name] = pattern
    return out


def regex_feature(text: str, pattern: str, name: str = "regex") -> np.ndarray:
    """1 (int8) on every character inside a match of ``pattern`` (re.MULTILINE).

    >>> regex_feature("a1b22", r"[0-9]+").tolist()
    [0, 1, 0, 1, 1]
    """
    if not pattern:
        raise ProbeError(f"feature regex {name!r}: empty pattern")
    try:
        rx = re.compile(pattern, re.MULTILINE)
    except re.error as err:
        raise ProbeError(f"feature regex {name!r}: does not compile: {err}") from None
    return mask([m.span() for m in rx.finditer(text)], len(text)).astype(np.int8)


def custom_feature(text: str, name: str, fn: Callable[[str], np.ndarray]) -> np.ndarray:
    """``fn(text)`` checked: one number per character (booleans become 0/1 int8)."""
    values = fn(text)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != len(text):
        got = f"{arr.shape[0]} values" if arr.ndim == 1 else f"an array of shape {arr.shape}"
        raise ProbeError(f"feature {name!r}: returned {got} for a text of {len(text)} characters")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ProbeError(f"feature {name!r}: values must be numbers, got dtype {arr.dtype}")
    return arr
