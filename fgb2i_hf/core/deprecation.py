"""Deprecated aliases of moved names, resolved when they are used (so a lower layer keeps no import of the higher
layer a name moved to)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable


def moved_names(old_module: str, new_module: str, names: Iterable[str],
                fallback: Callable[[str], object] | None = None) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``old_module``: each of ``names`` comes from ``new_module`` with a
    ``DeprecationWarning`` (the old name is removed in the next release); other names go to ``fallback``, else
    raise ``AttributeError``.

        __getattr__ = moved_names(__name__, "fgb2i_hf.drivers.fit", ("FitDecodersConfig", "fit_decoders"))
    """
    names = frozenset(names)

    def __getattr__(name: str):
        if name in names:
            warnings.warn(f"{old_module}.{name} moved to {new_module}.{name}; the old name will be removed in the "
                          "next release", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(new_module), name)
        if fallback is not None:
            return fallback(name)
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")

    return __getattr__
