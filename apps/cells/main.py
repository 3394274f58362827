"""One recurrent cell at a time: the recorded text coloured by the cell, and ways to find cells.

    bokeh serve apps/cells --args --recordings recordings/
    http://localhost:5006/cells?recording=stdlib-test.h5&layer=0&stream=c&unit=89&start=0   (the quote cell)

A bare URL opens on the best cell for in_short_string in a window of strings (``selection.opening``).

Order as in Bokeh's movies example: data → widgets → callbacks → layout → first update →
add_root. The text window is ``window.py``; each tab is a module in ``tabs/`` (add one:
write the module, add its name to ``TABS``; a tab's own URL keys are its ``PARAMS``).
Every change of selection goes through ``Session.select``, which redraws each view.
"""
from functools import partial
from importlib import import_module

from bokeh.io import curdoc
from bokeh.layouts import column, row
from bokeh.models import Div, Select, Spinner, TabPanel, Tabs

from probe.text.features import FEATURES

from . import notice, views, window
from .selection import WINDOWS, from_query, is_bare
from .session import Session, View
from .store import store_for
from .views import describe

STREAM_WIDTH = 230  # the stream menu: wide enough for its longest label, "ngram · against n-grams (3)"
TABS = ["card", "leaderboard", "match", "saturation", "live", "intervene", "saliency", "circuit", "features", "ngrams"]  # modules in tabs/, in page order

# ---- data -----------------------------------------------------------------------------------
doc = curdoc()
store = store_for(doc)
tab_modules = [import_module(f".tabs.{name}", __package__) for name in TABS]
params = tuple(param for module in tab_modules for param in getattr(module, "PARAMS", ()))  # tabs' URL keys
arguments = doc.session_context.request.arguments if doc.session_context else {}  # the URL query
sel, url_problems = from_query(arguments, store, params)
session = Session(doc, store, sel, views.message_div(name="message", sizing_mode="stretch_width"))
doc.on_session_destroyed(session.closed)  # a closed page's jobs are dropped

# ---- widgets --------------------------------------------------------------------------------
controls = dict(
    recording=Select(title="recording", options=store.names(), value=sel.recording or "", width=200,
                     name="recording"),
    layer=Select(title="layer", options=["0"], value="0", width=70, name="layer"),
    stream=Select(title="stream", value=sel.stream or "", width=STREAM_WIDTH, name="stream", options=[]),  # see show
    unit=Spinner(title="unit", low=0, high=0, step=1, value=0, width=90, name="unit"),
    feature=Select(title="feature overlay", options=list(FEATURES), value=sel.feature, width=150,
                   name="feature"),
    window=Select(title="window", options=[str(w) for w in WINDOWS], value=str(sel.window), width=90,
                  name="window"),
)
url_state = Div(text="", visible=False, name="url-state", disable_math=True)
notice_view = notice.build(session)  # while the analysis pass runs
text_window = window.build(session)
tabs = [module.build(session) for module in tab_modules]


# ---- callbacks ------------------------------------------------------------------------------
def show(sel):
    """Widgets, address bar and title follow the selection."""
    rec = session.rec
    with session.quietly():
        controls["layer"].options = [str(k) for k in rec.layer_ids]  # the open recording's, first
        controls["stream"].options = [(s, f"{s} · {describe(rec, sel.layer, s)}") for s in rec.streams_of(sel.layer)]
        controls["unit"].high = rec.width(sel.layer, sel.stream) - 1
        for key, widget in controls.items():
            widget.value = getattr(sel, key) if isinstance(widget, Spinner) else str(getattr(sel, key))
    url_state.text = sel.query()
    names = rec.unit_names(sel.layer, sel.stream)
    what = f" ({names[sel.unit]})" if names else ""
    doc.title = f"cells · {sel.recording} layer {sel.layer} {sel.stream} unit {sel.unit}{what}"


def on_widget(key, convert, attr, old, new):
    if new is not None:
        session.on_widget(**{key: convert(new)})


for key, convert in [("recording", str), ("layer", int), ("stream", str), ("unit", int),
                     ("feature", str), ("window", int)]:
    controls[key].on_change("value", partial(on_widget, key, convert))
url_state.js_on_change("text", views.url_writer(url_state))
doc.js_on_event("document_ready", views.url_writer(url_state))

# ---- layout ---------------------------------------------------------------------------------
head = View(row(*controls.values()), update=show)
panels = Tabs(sizing_mode="stretch_width", name="tabs", tabs=[
    TabPanel(title=module.TITLE, child=tab.child) for module, tab in zip(tab_modules, tabs)])
panels.on_change("active", lambda attr, old, new: tabs[new].on_show())
body = column(head.child, notice_view.child, text_window.child, panels, name="body", visible=bool(store.names()),
              sizing_mode="stretch_width")
session.views = [notice_view, text_window, *tabs, head]  # widgets and address last: they say what is shown

# ---- first update ---------------------------------------------------------------------------
session.start(url_problems, bare=is_bare(arguments, params))
doc.add_root(column(session.message, body, url_state, sizing_mode="stretch_width"))
