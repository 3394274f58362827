"""One browser tab's state: its selection, the open recording and cell, and the views that
follow them. Every change of selection goes through ``Session.select``.

main.py re-runs for each session, but sibling modules are imported once per server, so
everything a session changes lives on its ``Session`` or in closures made by ``build``.
"""
from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
from bokeh.document import Document
from bokeh.models import Div, LayoutDOM

from probe.analysis import summaries
from probe.errors import ProbeError
from probe.output import render
from probe.recording.reader import Recording

from .jobs import Jobs
from .selection import OPENING_FEATURE, Selection, fit, opening
from .store import Store
from .views import message_html, reason

log = logging.getLogger(__name__)
OPENING_WAIT = 1.0  # seconds a bare URL waits for the recording's analysis (cached: ~0.5 s at most)


def _nothing(*args) -> None:
    pass


@dataclass
class View:
    """A part of the page that follows the session: the text window, or a tab.

    ``update(sel)`` runs after every change of selection (redraw only what changed: compare
    ``sel.cell``); ``clear()`` when the recording cannot be opened; ``on_analysis(result)``
    when a recording's analysis starts (None), fails (the exception) or is ready (its dict);
    ``on_show()`` when its tab is opened; ``marks(sel)``: ranges [start, stop) of the window's
    text to mark, with the class that marks them (``views.TEXT_CSS``: sel, hit).
    """

    child: LayoutDOM
    update: Callable[[Selection], None] = _nothing
    clear: Callable[[], None] = _nothing
    on_analysis: Callable[[object], None] = _nothing
    on_show: Callable[[], None] = _nothing
    marks: Callable[[Selection], list[tuple[int, int, str]]] = lambda sel: []


@dataclass(eq=False)
class Session:
    """What one browser tab holds; after each change its ``views`` are redrawn, in order."""

    doc: Document
    store: Store
    sel: Selection
    message: Div                      # the problems, one box each
    views: list[View] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rec: Recording | None = None      # the open recording; None if it could not be opened
    summary: dict | None = None       # the selected cell's summaries (``Store.unit_summary``)
    scale: tuple[float, float] | None = None  # a derived stream's colour range (``render.scaled``)
    span: tuple[int, int] = (0, 0)    # [start, stop) of the visible window
    values: np.ndarray | None = None  # [stop - start] the selected cell over the visible window
    analysis: object = None           # the recording's analysis: None, the exception, or its dict
    quiet: bool = False               # widgets are being set from the selection
    pending: Selection | None = None  # a bare URL's view, to leave for ``opening`` if still untouched
    jobs: Jobs | None = None          # the tabs' heavy work, in the shared pool (``jobs.py``)

    def __post_init__(self) -> None:
        if self.jobs is None:
            self.jobs = Jobs(self.doc)

    def closed(self, session_context) -> None:
        """The browser tab went away (Bokeh's on_session_destroyed): drop its jobs."""
        self.jobs.close()

    def select(self, **changes) -> None:
        """The one way the selection changes (widgets, table, scatter, overview, paging)."""
        self.sel.set(**changes)
        self.problems.clear()
        sel = self.sel
        try:
            if "recording" in changes or self.rec is None:
                self._open()
            if self.rec is not None:
                self.problems.extend(fit(sel, self.rec))
                # a cell switch reads the cell's summaries (no read once loaded) and the window only
                self.summary = self.store.unit_summary(sel.recording, sel.layer, sel.stream, sel.unit)
                self.scale = summaries.colour_scale(self.summary) if render.is_derived(sel.stream) else None
                self.values, self.span = None, (sel.start, min(len(self.rec), sel.start + sel.window))
                self.values = self.read(*self.span)
                for view in self.views:
                    view.update(sel)
        except Exception as e:  # noqa: BLE001 - say so on the page; the server keeps serving
            log.exception("cells: updating %s failed", sel)
            self.problems.append(f"could not show {sel.recording} layer {sel.layer} {sel.stream} unit "
                                 f"{sel.unit}: {reason(e)}")
        self.show_problems()

    def read(self, start: int, stop: int) -> np.ndarray:
        """The selected cell over [start, stop): float32 [stop - start], from the visible window
        when it holds them, else a read of those rows only."""
        a, b = self.span
        if self.values is not None and a <= start <= stop <= b:
            return self.values[start - a:stop - a]
        sel = self.sel
        return self.store.values(sel.recording, sel.layer, sel.stream, sel.unit, start, stop)

    def start(self, url_problems: list[str], bare: bool = False) -> None:
        """The first update; what the URL asked for and could not get is said first. A bare
        URL (``bare``) then opens on ``selection.opening``, once the analysis is known: at
        once if it is cached, else when it is ready, if the page is still as it opened."""
        self.select()
        if bare and self.rec is not None:
            try:
                result = self.store.analysis(self.sel.recording).result(timeout=OPENING_WAIT)
            except FutureTimeout:
                self.pending = self.sel.copy()
            except Exception:  # noqa: BLE001 - the analysis failed: its views say so
                pass
            else:
                self._open_on(result)
        self.problems[:0] = url_problems
        self.show_problems()

    def say(self, *problems: str) -> None:
        """Messages about input that changed nothing (a malformed box), until the next change."""
        self.problems.extend(problems)
        self.show_problems()

    def on_widget(self, **changes) -> None:
        """A widget, table row or dot was picked: select, unless the page set it itself."""
        if not self.quiet:
            self.select(**changes)

    @contextmanager
    def quietly(self):
        """Set widgets from the selection without their callbacks selecting again."""
        self.quiet = True
        try:
            yield
        finally:
            self.quiet = False

    def show_problems(self) -> None:
        self.message.text = message_html(self.problems)
        self.message.visible = bool(self.problems)

    def _open(self) -> None:
        """A recording was chosen: open it and start its analysis. One rule for what cannot
        be shown, as for the URL: show the nearest thing that can (here the first recording
        that opens) and say so; clear the views only if nothing opens."""
        self.rec = self.values = self.summary = self.analysis = None
        self.span = (0, 0)
        name = self.sel.recording
        try:
            self.rec = self.store.recording(name or "")
        except ProbeError as e:
            fallback = self.store.default_name(avoid=name) if name else None
            if fallback is not None and fallback != name:
                try:
                    self.rec = self.store.recording(fallback)
                except ProbeError:
                    fallback = None
            if self.rec is None:
                self.problems.append(str(e) if name else self.store.message or str(e))
                for view in self.views:
                    view.clear()
                return
            self.problems.append(f"{e}; showing {fallback} instead")
            self.sel.recording = name = fallback
        for view in self.views:
            view.on_analysis(None)
        self.store.summaries(name)  # loaded after the analysis, for the cell switches
        self.store.analysis(name).add_done_callback(
            lambda future: on_next_tick(self.doc, partial(self._analysed, name, future)))

    def _analysed(self, name: str, future) -> None:
        if name != self.sel.recording:
            return
        try:
            self.analysis = future.result()
        except Exception as e:  # noqa: BLE001 - shown on the page; the server keeps serving
            self.analysis = e
        for view in self.views:
            view.on_analysis(self.analysis)
        pending, self.pending = self.pending, None
        if pending is not None and pending == self.sel and isinstance(self.analysis, dict):
            self._open_on(self.analysis)

    def _open_on(self, result: dict) -> None:
        """Show the opening view of the recording (``selection.opening``), if it has one."""
        sel = self.sel
        try:
            view = opening(result["best"], self.store.feature(sel.recording, OPENING_FEATURE),
                           self.rec.tokens, sel.window)
        except Exception:  # noqa: BLE001 - keep the plain first view
            log.exception("cells: no opening view for %s", sel.recording)
            return
        if view is not None:
            self.select(**view)


def on_next_tick(doc: Document, callback) -> None:
    """Schedule ``callback`` on the document's thread (safe from a worker thread)."""
    try:
        doc.add_next_tick_callback(callback)
    except Exception:  # noqa: BLE001 - the session is gone; nothing to update
        pass
