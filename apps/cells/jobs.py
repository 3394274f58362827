"""Heavy work off the server's event loop: one shared pool, at most one job per tab.

The event loop serves every session; a computation on it (an ablation, a saliency pass,
live text, a match) freezes every other user's page until it ends. So a tab never computes
in a callback: it calls ``session.jobs.submit(tab, work, done)``. ``work(job)`` runs in a
worker of the one pool every session shares; ``done(result)`` (or ``failed(error)``) runs
back on the session's own document thread, through ``add_next_tick_callback``, as Bokeh's
"Updating from threads" pattern says.

Rules, per session and tab (``Jobs``):
- a newer job supersedes the older one: a queued one is cancelled before it starts, a
  running one is asked to stop (``job.check()`` raises ``Cancelled`` inside ``work``) and
  its result is dropped whenever it arrives;
- a closed session's jobs are cancelled and their results dropped;
- ``status(text)`` says "queued", "running", progress and "" (done) on the page.

Why threads, not processes: the work is torch and numpy, which release the GIL, and it
needs the server's open recordings and loaded models, which a process would have to load
again. The pool has one worker per core, and torch runs one thread per job (set in
``app_hooks``), so concurrent jobs do not oversubscribe the cores.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .views import note_html

log = logging.getLogger(__name__)


def _trimmer():
    """glibc's malloc_trim: hand freed heap back to the system after a job (torch's buffers
    freed in several worker threads otherwise stay in per-thread arenas); None elsewhere."""
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


TRIM = _trimmer()
WORKERS = max(1, os.cpu_count() or 1)
POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cells-job")
PROGRESS_EVERY = 0.25  # seconds between progress messages sent to a page


def working(note, button, what: str) -> Callable[[str], None]:
    """A job's ``status``: the tab's note says queued / what it is doing / progress, and its
    button is disabled until the job ends (then the job's own result replaces the note)."""

    def status(text: str) -> None:
        button.disabled = text != ""
        if text == "queued":
            note.text = note_html(f"queued: {what} starts when a worker is free…")
        elif text == "running":
            note.text = note_html(f"{what}…")
        elif text:
            note.text = note_html(f"{what}… {text.split(': ', 1)[-1]}")
    return status


class Bar:
    """A tqdm-like ``update(n)`` for library code that takes ``bar=``: reports to a job."""

    def __init__(self, job: "Job", total: float, what: str):
        self.job, self.total, self.what, self.n = job, total, what, 0

    def update(self, n: float = 1) -> None:
        self.n += n
        self.job.progress(self.n, self.total, self.what)


class Cancelled(Exception):
    """Raised inside a job's work by ``job.check()`` once the job has been superseded."""


@dataclass(eq=False)
class Job:
    """One submitted computation: its tab, its state, and a flag the work polls to stop."""

    tab: str
    state: str = "queued"                      # queued → running → done | cancelled | failed
    future: Future | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _said: float = 0.0                         # when progress was last sent
    _status: Callable[[str], None] | None = None

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        """Stop it: before it starts (removed from the queue) or at its next ``check``."""
        self._stop.set()
        if self.future is not None and self.future.cancel():
            self.state = "cancelled"

    def check(self) -> None:
        """Inside ``work``: raise ``Cancelled`` if a newer job replaced this one."""
        if self._stop.is_set():
            raise Cancelled(self.tab)

    def progress(self, done: float, total: float, what: str = "") -> None:
        """Inside ``work``: report progress (sent to the page at most every 0.25 s); also a
        cancellation point."""
        self.check()
        now = time.monotonic()
        if self._status is not None and total and now - self._said >= PROGRESS_EVERY:
            self._said = now
            self._status(f"{what or 'working'}: {100 * done / total:.0f} %")


class Jobs:
    """A session's heavy work, one job per tab at a time, in the shared pool."""

    def __init__(self, doc, pool: ThreadPoolExecutor = POOL):
        self.doc = doc
        self.pool = pool
        self.current: dict[str, Job] = {}
        self.closed = False
        self._lock = threading.Lock()

    def submit(self, tab: str, work: Callable[[Job], Any], done: Callable[[Any], None],
               failed: Callable[[BaseException], None] | None = None,
               status: Callable[[str], None] | None = None) -> Job:
        """Run ``work(job)`` in a worker; then ``done(result)`` or ``failed(error)`` on the
        document's thread, unless a newer job of ``tab`` or the session's end dropped it.
        ``status(text)`` (on the document's thread) says queued / running / progress / ""."""
        say = (lambda text: self._on_doc(lambda: status(text))) if status else None
        job = Job(tab, _status=say)
        if self.closed:  # nothing new starts for a closed session
            job.cancel()
            return job
        with self._lock:
            old = self.current.get(tab)
            self.current[tab] = job
        if old is not None:
            old.cancel()
        if status:
            status("queued")

        def run():
            if job.cancelled:
                raise Cancelled(tab)
            job.state = "running"
            if say:
                say("running")
            try:
                return work(job)
            finally:
                if TRIM is not None:
                    TRIM(0)

        def finished(future: Future) -> None:
            if future.cancelled():
                return
            error = future.exception()
            job.state = "done" if error is None else "cancelled" if isinstance(error, Cancelled) else "failed"
            if isinstance(error, Cancelled):
                return

            def deliver() -> None:
                if not self.is_current(job):
                    return  # superseded or closed: dropped
                with self._lock:
                    self.current.pop(tab, None)
                if status:
                    status("")
                if error is None:
                    done(future.result())
                elif failed is not None:
                    failed(error)
                else:
                    log.error("cells: a %s job failed", tab, exc_info=error)
            self._on_doc(deliver)

        job.future = self.pool.submit(run)
        job.future.add_done_callback(finished)
        return job

    def is_current(self, job: Job) -> bool:
        return not self.closed and not job.cancelled and self.current.get(job.tab) is job

    def cancel(self, tab: str) -> None:
        """Drop ``tab``'s job (the selection moved on): cancelled if queued, stopped at its next
        check if running; its result will not be delivered."""
        with self._lock:
            job = self.current.pop(tab, None)
        if job is not None:
            job.cancel()

    def busy(self, tab: str) -> bool:
        job = self.current.get(tab)
        return job is not None and job.state in ("queued", "running")

    def close(self) -> None:
        """The session ended: cancel every job; late results are dropped."""
        self.closed = True
        with self._lock:
            jobs, self.current = list(self.current.values()), {}
        for job in jobs:
            job.cancel()

    def _on_doc(self, callback: Callable[[], None]) -> None:
        if self.closed:
            return
        try:
            self.doc.add_next_tick_callback(callback)
        except Exception:  # noqa: BLE001 - the session is gone; nothing to update
            pass
