"""The dashboard's heavy work runs in a shared pool (apps/cells/jobs.py): results come back on
the document's thread, a newer job of a tab supersedes the older one, a closed session's
jobs are dropped. Orderings are checked with events, never with timings."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from apps.cells.jobs import Cancelled, Jobs

WAIT = 30  # seconds: only a bound on a hang, never a measurement


class FakeDoc:
    """A document whose next-tick callbacks queue until ``pump`` runs them, on the test's thread."""

    def __init__(self):
        self.queue: list = []
        self.lock = threading.Lock()
        self.arrived = threading.Event()

    def add_next_tick_callback(self, callback):
        with self.lock:
            self.queue.append(callback)
        self.arrived.set()

    def pump(self) -> int:
        with self.lock:
            todo, self.queue = self.queue, []
            self.arrived.clear()
        for callback in todo:
            callback()
        return len(todo)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=1) as p:  # one worker: queueing is visible
        yield p


def settle(doc: FakeDoc, *jobs) -> None:
    """Wait for the jobs' futures, then run every callback they scheduled."""
    for job in jobs:
        try:
            job.future.exception(timeout=WAIT)
        except Exception:  # noqa: BLE001 - a cancelled future
            pass
    doc.pump()


def test_the_result_comes_back_on_the_documents_thread_after_queued_and_running(pool):
    doc, seen, status = FakeDoc(), [], []
    jobs = Jobs(doc, pool)
    job = jobs.submit("live", lambda job: threading.current_thread().name, done=seen.append,
                      status=status.append)
    assert status == ["queued"]  # said at once, on the caller's thread
    settle(doc, job)
    assert seen and seen[0] != threading.current_thread().name  # computed in a worker
    assert status == ["queued", "running", ""]  # delivered through the document's callbacks
    assert not jobs.busy("live")


def test_a_newer_job_supersedes_a_running_one_whose_late_result_is_dropped(pool):
    doc, seen = FakeDoc(), []
    jobs = Jobs(doc, pool)
    started, release = threading.Event(), threading.Event()

    def slow(job):
        started.set()
        release.wait(WAIT)
        return "old"
    old = jobs.submit("intervene", slow, done=seen.append)
    assert started.wait(WAIT)
    new = jobs.submit("intervene", lambda job: "new", done=seen.append)
    release.set()
    settle(doc, old, new)
    assert seen == ["new"] and old.cancelled


def test_a_queued_job_is_cancelled_before_it_starts(pool):
    doc, seen, ran = FakeDoc(), [], []
    jobs = Jobs(doc, pool)
    blocker = threading.Event()
    other = Jobs(FakeDoc(), pool).submit("match", lambda job: blocker.wait(WAIT), done=print)  # fills the worker
    queued = jobs.submit("saliency", lambda job: ran.append("first") or 1, done=seen.append)
    newer = jobs.submit("saliency", lambda job: ran.append("second") or 2, done=seen.append)
    blocker.set()
    settle(doc, other, queued, newer)
    assert ran == ["second"] and seen == [2] and queued.state == "cancelled"


def test_a_running_job_stops_at_its_next_check_once_superseded(pool):
    doc, seen = FakeDoc(), []
    jobs = Jobs(doc, pool)
    inside, steps = threading.Event(), []

    def loop(job):
        for step in range(10_000):
            job.progress(step, 10_000, "steering")  # a cancellation point
            steps.append(step)
            inside.set()
            threading.Event().wait(0.001)
        return "finished"
    first = jobs.submit("intervene", loop, done=seen.append)
    assert inside.wait(WAIT)
    jobs.submit("intervene", lambda job: "second", done=seen.append)
    settle(doc, first)
    assert isinstance(first.future.exception(), Cancelled) and len(steps) < 10_000
    settle(doc, jobs.current.get("intervene") or first)
    assert seen == ["second"]


def test_a_closed_sessions_jobs_are_dropped(pool):
    doc, seen = FakeDoc(), []
    jobs = Jobs(doc, pool)
    release = threading.Event()
    running = jobs.submit("live", lambda job: release.wait(WAIT) and "late", done=seen.append)
    queued = jobs.submit("match", lambda job: "never", done=seen.append)
    jobs.close()
    release.set()
    settle(doc, running, queued)
    assert seen == [] and queued.state == "cancelled" and doc.pump() == 0
    after = jobs.submit("live", lambda job: "after close", done=seen.append)
    assert after.cancelled  # nothing new starts for a closed session


def test_a_failure_goes_to_failed_on_the_documents_thread(pool):
    doc, errors = FakeDoc(), []
    jobs = Jobs(doc, pool)

    def broken(job):
        raise ValueError("bad text")
    job = jobs.submit("live", broken, done=lambda r: None, failed=errors.append)
    settle(doc, job)
    assert [str(e) for e in errors] == ["bad text"] and job.state == "failed"


def test_tabs_do_not_supersede_each_other(pool):
    doc, seen = FakeDoc(), []
    jobs = Jobs(doc, pool)
    a = jobs.submit("live", lambda job: "live", done=seen.append)
    b = jobs.submit("match", lambda job: "match", done=seen.append)
    settle(doc, a, b)
    assert sorted(seen) == ["live", "match"]
