"""Base methods as specs, one file each, registered by name (``get_base("ldm")``).

``ldm`` (Takagi & Nishimoto), ``brain_diffuser`` (Ozcelik & VanRullen), ``mindeye`` (Scotti et al.). A new base is a
file that builds a :class:`BaseSpec` and calls :func:`register_base` (docs/architecture.md).
"""

from . import brain_diffuser, ldm, mindeye  # noqa: F401  (registers the three published bases)
from .backbones import STABLE_DIFFUSION, VERSATILE_DIFFUSION
from .spec import (Backbone, BaseSpec, ComponentSpec, TargetSource, TargetSpec, available_bases, get_base, register_base,
                   unregister_base)

__all__ = ["Backbone", "BaseSpec", "ComponentSpec", "STABLE_DIFFUSION", "TargetSource", "TargetSpec", "VERSATILE_DIFFUSION",
           "available_bases", "get_base", "register_base", "unregister_base"]
