"""The dashboard's tabs, one module each, listed by name in main.py's ``TABS``.

A tab module has ``TITLE`` and ``build(session) -> View`` (``session.View``): its widgets,
made inside ``build`` and closed over by its callbacks, since this module is imported once
per server and shared by every session. To add a tab, write a module here and add its
name to ``TABS``.
"""
