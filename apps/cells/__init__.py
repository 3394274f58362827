"""The cells dashboard (``bokeh serve apps/cells``): a package so main.py and app_hooks.py
can import their sibling modules (store, selection, session, views, window, tabs/)."""
