"""Progress of a long pass: a tqdm bar on the terminal, or a callback (the dashboard's notice).

    bar = progress.bar(True, total=len(rec), desc="scoring")   # tqdm
    bar = progress.bar(lambda done, total: ..., total, "scoring")  # a callback
    bar.update(n); bar.close()
"""
from __future__ import annotations

import threading


class Progress:
    """A progress bar that reports to ``callback(done, total)`` instead of a terminal (the
    dashboard's notice): ``update`` and ``close`` as tqdm's, safe from several threads."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, int(total), 0
        self._lock = threading.Lock()
        callback(0, self.total)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += int(n)
            done = self.done
        self.callback(done, self.total)

    def close(self) -> None:
        pass


def bar(progress, total: int, desc: str):
    """A tqdm bar on the terminal if ``progress`` is true (hidden if false); if it is a
    function, a ``Progress`` that calls it with (characters done, total)."""
    if callable(progress):
        return Progress(progress, total)
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="char", unit_scale=True, disable=not progress, desc=desc)
