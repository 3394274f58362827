"""No user's action freezes another's (issue 29): the dashboard's heavy work runs in workers.

Each test holds a heavy action inside its worker with an event, then does something in
another session (or the same one) and checks the order in which things completed: the
other session's cell switch completes while the heavy action is still held. Before this,
the action ran on the server's one event loop and the switch could only complete after
it. Orderings, never timings.
"""
from __future__ import annotations

import sys
import threading

import pytest
from test_app import Page, click, folder, open_tab, serving  # noqa: F401 - folder: a fixture
from test_app import pages as open_pages

HOLD = 60  # seconds a held action waits at most (a bound on a hang, not a measurement)


def tab_module(p: Page, name: str):
    """The module ``tabs/<name>.py`` of the app serving page ``p`` (Bokeh imports each served
    app's package under its own name; other servers in this process have their own copy)."""
    package = type(session_of(p)).__module__.rsplit(".", 1)[0]
    return sys.modules[f"{package}.tabs.{name}"]


@pytest.fixture(scope="module")
def server(folder):  # noqa: F811 - the fixture imported above
    with serving(folder) as s:
        yield s


@pytest.fixture
def pages(server):
    yield from open_pages(server)


@pytest.fixture
def held(monkeypatch):
    """hold(module, name): that tab function waits in its worker until ``release``."""
    state = {"started": threading.Event(), "release": threading.Event(), "threads": []}

    def hold(module, name: str) -> None:
        original = getattr(module, name)

        def waiting(*args, **kwargs):
            state["threads"].append(threading.current_thread().name)
            state["started"].set()
            state["release"].wait(HOLD)
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, waiting)
    state["hold"] = hold
    yield state
    state["release"].set()


def start_intervene(p: Page) -> str:
    open_tab(p, "intervene")
    click(p, "intervene-run")
    return "intervene-text"


def start_saliency(p: Page) -> str:
    open_tab(p, "explain a prediction")
    p.set("saliency-position", value=40)
    click(p, "saliency-run")
    return "saliency-text"


def start_live(p: Page) -> str:
    p.set("live-in", value="def f(x): return x")
    return "live"


def start_steer(p: Page) -> str:
    open_tab(p, "intervene")
    click(p, "steer-run")
    return "steer-clamped"


@pytest.mark.parametrize("tab, function, start", [
    ("intervene", "zeroed", start_intervene),
    ("saliency", "explain", start_saliency),
    ("live", "run", start_live),
    ("intervene", "sample", start_steer),
])
def test_another_sessions_cell_switch_completes_while_a_heavy_action_runs(pages, held, tab, function, start):
    a = pages(recording="tiny.h5", layer=1, stream="c", unit=2)
    b = pages(recording="tiny.h5", layer=1, stream="c", unit=2)
    held["hold"](tab_module(a, tab), function)
    out = start(a)
    a.wait_for(held["started"].is_set)  # the action is running, held in its worker
    assert held["threads"][0].startswith("cells-job")  # not the event loop's thread
    before = b["text"].text
    b.set("unit", value=5)  # session B switches cell meanwhile: this returns only when it is done
    assert b["text"].text != before and "unit=5" in b["url-state"].text
    a.set("unit", value=4) if tab == "live" else None  # the same session answers too (live recolours later)
    assert a[out].text == "" and not held["release"].is_set()  # … and A's action has not completed
    held["release"].set()
    a.wait_for(lambda: a[out].text)  # then A's result arrives
    assert a.message == "" and b.message == ""


def test_the_page_says_queued_then_working_while_a_job_waits_and_runs(pages, held, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    one = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cells-job")  # one worker: B's job queues
    a = pages(recording="tiny.h5", layer=1, stream="c", unit=2)
    b = pages(recording="tiny.h5", layer=1, stream="c", unit=2)
    for p in (a, b):
        monkeypatch.setattr(session_of(p).jobs, "pool", one)
    held["hold"](tab_module(a, "intervene"), "zeroed")
    start_intervene(a)
    a.wait_for(held["started"].is_set)
    assert "zeroing layer 1 unit 2" in a["intervene-note"].text and a["intervene-run"].disabled
    start_intervene(b)
    assert "queued" in b["intervene-note"].text and b["intervene-run"].disabled
    held["release"].set()
    b.wait_for(lambda: b["intervene-text"].text and a["intervene-text"].text)
    assert not a["intervene-run"].disabled and not b["intervene-run"].disabled
    assert "units zeroed on" in b["intervene-note"].text
    one.shutdown()


def session_of(p: Page):
    """The app's Session behind a page: its on_session_destroyed callback is ``Session.closed``."""
    return next(cb.__self__ for cb in p.doc.session_destroyed_callbacks if hasattr(cb, "__self__"))


def test_a_newer_request_supersedes_and_the_late_result_is_dropped(pages, held):
    a = pages(recording="tiny.h5", layer=1, stream="c", unit=2)
    held["hold"](tab_module(a, "live"), "run")
    a.set("live-in", value="first text")
    a.wait_for(held["started"].is_set)
    held["release"].set()  # the first (held) run will finish, but after the second was asked for
    a.set("live-in", value="second")
    a.wait_for(lambda: len(a.positions("live")) == len("second"))
    a.wait_for(lambda: not session_of(a).jobs.busy("live"))
    assert len(a.positions("live")) == len("second")  # the first's late result was dropped


def test_a_closed_sessions_jobs_are_dropped(server, pages, held):
    a = pages(recording="tiny.h5", layer=1, stream="c", unit=2)
    held["hold"](tab_module(a, "intervene"), "zeroed")
    start_intervene(a)
    a.wait_for(held["started"].is_set)
    jobs = session_of(a).jobs
    job = jobs.current["intervene"]
    a.close()
    context = server._tornado._applications["/cells"]

    async def discard():  # as Bokeh's periodic cleanup does for a closed tab, once its socket is gone
        import asyncio
        while not jobs.closed:
            await context._cleanup_sessions(0)
            await asyncio.sleep(0.05)
    server.io_loop.run_sync(discard, timeout=HOLD)
    assert jobs.closed and job.cancelled and jobs.current == {}
    held["release"].set()
    job.future.exception(timeout=HOLD)  # it ends; nothing is delivered to the destroyed document
