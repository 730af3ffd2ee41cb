"""The status page and the Atom feed: ``GET /``, ``/status``, ``/feed.atom`` (issue 13).

``source.py`` is the seam (``StatusSource``); ``view.py`` turns its data into a page (pure);
``render.py`` and ``templates/`` make HTML of it; ``feed.py`` the Atom feed; ``web.py`` the
handlers; ``live.py`` a source on what a one-node daemon keeps today.
"""
