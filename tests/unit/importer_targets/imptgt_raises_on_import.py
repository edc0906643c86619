"""Import target that raises while its module body runs."""

from __future__ import annotations

RATIO = 1 / 0
