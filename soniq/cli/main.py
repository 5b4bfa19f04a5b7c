"""``python -m soniq.cli.main`` and ``soniq = soniq.cli.main:main``: the published
package's module path of the ``soniq`` command, which its tests and ops scripts use.

A package cannot hold both a submodule ``main`` and another object called
``main``: importing this module rebinds ``soniq.cli.main`` to it. So the module
stands in for the command: calling it, or reading any click attribute from it
(``make_context``, ``get_command``...), reaches the group in :mod:`soniq.cli.group`.
Whichever of the two ``soniq.cli.main`` turns out to be, it behaves as the command.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from soniq.cli.group import main


class _CommandModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return main(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(main, name)


sys.modules[__name__].__class__ = _CommandModule

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover - exercised as a subprocess
    main()
