"""vistag: turn an image archive into a searchable, tagged collection.

``from vistag import Archive`` is the public API; nothing heavy is imported until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Archive", "__version__"]

if TYPE_CHECKING:
    from vistag.api import Archive


def __getattr__(name: str) -> Any:
    if name == "Archive":
        from vistag.api import Archive

        return Archive
    raise AttributeError(name)
