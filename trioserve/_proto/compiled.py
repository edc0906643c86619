"""``mypyc_attr`` for the classes of ``_proto`` and the exchange that the optional build
compiles with mypyc (see trioserve/_mypyc.py) while pure-Python classes extend them.

mypyc reads the decorator, by the name ``mypy_extensions.mypyc_attr``, when it compiles;
it does not call it for a compiled class. At run time in pure Python it is this stand-in,
which changes nothing: no dependency on mypy_extensions (which comes with mypy)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*_args: Any, **_flags: Any) -> Any:
        """A class decorator that changes nothing (see the module's docstring)."""
        return lambda cls: cls
