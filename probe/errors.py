"""The one exception type the CLI turns into a clean one-line message."""


class ProbeError(Exception):
    """A user-facing problem: bad input, a wrong file, a refused overwrite.

    The message should name the file and the problem in one line; the CLI prints it
    as ``probe: error: <message>`` and exits non-zero, with no traceback.
    """


_SAID: set[str] = set()


def deprecated(old: str, new: str) -> None:
    """One line on stderr, once per old spelling: ``probe: deprecated: OLD; write NEW``."""
    import sys
    if old not in _SAID:
        _SAID.add(old)
        print(f"probe: deprecated: {old}; write {new}", file=sys.stderr)
