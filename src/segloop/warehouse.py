"""Old import path of ``Warehouse`` and the configs, kept so existing imports (and branches
in flight) still work; the code lives in ``segloop.warehouses`` (one module per backend)."""

from segloop.warehouses import *  # noqa: F403
from segloop.warehouses import __all__ as __all__
from segloop.warehouses.base import _COMPILED as _COMPILED
