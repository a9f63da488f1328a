"""The typed exceptions of the library (defined in :mod:`core.errors`), under their public name."""

from core.errors import *  # noqa: F403
from core.errors import __all__  # noqa: F401
