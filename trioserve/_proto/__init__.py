"""Sans-IO protocol logic: standard library, h11, attrs (and h2 for http2), never trio.

``http``, ``websocket``, ``proxy_protocol`` and ``validate`` for clients' bytes, and
``http2`` (which needs h2, the ``http2`` extra: only the HTTP/2 edge imports it);
``channel`` for the master's own: its messages to and from workers and the preloader.
"""
