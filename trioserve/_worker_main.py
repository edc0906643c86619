"""``python -m trioserve._worker_main FD``: the process the master spawns as a worker.

A module of its own that nothing imports: the package imports :mod:`._worker` (entry
points → master → worker), so running ``trioserve._worker`` itself as ``__main__``
would load it a second time under another name (runpy warns about it).
"""

from __future__ import annotations

import sys

from ._worker import main

if __name__ == "__main__":
    sys.exit(main())
