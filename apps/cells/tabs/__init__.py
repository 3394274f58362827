"""The dashboard's tabs, one module each, listed by name in main.py's ``TABS``.

A tab module has ``TITLE`` and ``build(session) -> View`` (``session.View``): its widgets,
made inside ``build`` and closed over by its callbacks, since this module is imported once
per server and shared by every session. A tab that keeps state in the URL also has
``PARAMS`` (``selection.Param``: its keys, how they are read, checked and written); its
values are in ``sel.extra``. To add a tab, write a module here and add its name to
``TABS``; to remove one, take its name out: nothing else names it.
"""
