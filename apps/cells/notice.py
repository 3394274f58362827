"""The notice under the controls while a recording's analysis pass runs: how far it is and
how long it has left. The text window works meanwhile; the leaderboard, saturation and the
cell card's fast path fill in when the pass ends (then the notice goes)."""
from __future__ import annotations

import html

from .session import Session, View
from .views import note_div

POLL_MS = 500  # how often the notice asks the store how far the pass is


def build(session: Session) -> View:
    div = note_div(name="notice", visible=False)
    poll = None  # the periodic callback, while a pass runs

    def refresh() -> None:
        name = session.sel.recording
        state = session.store.progress(name) if name else None
        if state is not None:
            div.text, div.visible = notice_html(name, *state), True

    def stop() -> None:
        nonlocal poll
        if poll is not None:
            try:
                session.doc.remove_periodic_callback(poll)
            except ValueError:  # already gone with the session
                pass
            poll = None
        div.visible = False

    def on_analysis(result) -> None:
        nonlocal poll
        if result is not None:
            stop()
        elif poll is None:
            refresh()
            poll = session.doc.add_periodic_callback(refresh, POLL_MS)

    return View(div, clear=stop, on_analysis=on_analysis)


def notice_html(name: str, fraction: float, left: float | None) -> str:
    """'Analysing NAME: 34 % (about 2 min left)…' with a bar; the name is escaped."""
    pct = max(0.0, min(1.0, fraction)) * 100
    when = "" if left is None else f" · about {_duration(left)} left"
    if fraction >= 1:  # every stream scanned: the tables are being finished and cached
        when = " · finishing"
    return (f'<div class="note">Analysing <b>{html.escape(name)}</b> once (scores, saturation and '
            f'every cell\'s summaries, cached beside it): {pct:.0f} %{when}. The text works now; the '
            'leaderboard, saturation and a faster cell card follow when it is done.'
            f'<div style="height:4px;background:#eee;margin-top:3px;width:480px">'
            f'<div style="height:4px;background:#4a7fb5;width:{pct:.1f}%"></div></div></div>')


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"
