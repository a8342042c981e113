"""Compatibility alias: the differentiable ranks live in :mod:`lud.losses.ranking` (the loss library).

``import lud.ranking`` and ``from lud import ranking`` keep working and give that same module object.
"""

import sys

from .losses import ranking as _ranking

sys.modules[__name__] = _ranking
