"""The web dashboard under ``/ui/`` (docs/dashboard.md): server-rendered pages over the
admin API, for signed-in users (``kernex_server.accounts``).

``session`` signs the session cookie and guards routes, ``login`` logs in and out,
``pages`` renders the pages and the small JSON endpoints the page script polls, ``static``
serves ``ui.js`` and ``ui.css``. Templates autoescape every value.
"""
