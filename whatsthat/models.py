"""Kept at this path only for `export.pkl` files: they pickle the learner's `arch` as
`whatsthat.models.efficientnet_lite0` (or 1, 2), so this name must stay importable. The networks are
whatsthat.model.networks'; backbones for training are whatsthat.training.backbones'.
"""

from whatsthat.model.networks import efficientnet_lite0, efficientnet_lite1, efficientnet_lite2

__all__ = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
