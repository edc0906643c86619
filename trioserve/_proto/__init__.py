"""Sans-IO protocol logic: standard library, h11 and attrs only (and wsproto, itself
sans-IO, in ``deflate``), never trio.

``http``, ``websocket``, ``deflate``, ``proxy_protocol`` and ``validate`` for clients' bytes;
``channel`` for the master's own: its messages to and from workers and the preloader.
"""
