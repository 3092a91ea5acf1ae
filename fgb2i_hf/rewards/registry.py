"""Reward registry and the checked call that the REINFORCE trainer uses.

A reward is any callable ``reward(completions: list[str], **columns) -> list[float]`` — trl's reward
convention (trl.GRPOTrainer): one float per completion, ``columns`` are the batch's dataset columns
repeated once per completion (``captions``, ``fine_captions``, ``objects``, ``nsd_id``, ``subject``,
``images``, ...). Rewards should accept ``**kwargs`` and ignore the columns they do not use.

Rewards are named in YAML by a registered name (``object_accuracy``, ``clip_text_image``,
``clip_image_image``) or by ``"package.module:attribute"`` for a user's own.

A reward declares the resources it needs beyond the batch's columns as a ``needs`` attribute, a tuple of keyword
argument names of its factory (``CLIPTextImageReward.needs == ("clip", "stimuli", "device")``). Whoever builds the
rewards (the RL driver) offers the resources it can make as a :class:`RewardResources`; ``get_reward`` hands each
reward exactly what it declares, built on first use, so nothing outside a reward's own file names it.

    needs    what it is
    clip     a ``fgb2i_hf.clip.CLIPScorer`` (shared by the CLIP rewards)
    stimuli  ``nsd_id -> uint8 (H, W, 3)`` stimulus images (``fgb2i_hf.data.NSDStimuli``)
    renderer ``prompts -> images``, a text-to-image renderer (``TextToImageRenderer``)
    render_surrogate  a fitted ``RenderSurrogate`` (offered only with ``image_reward: surrogate``)
    device   the device the reward's models run on (``accelerator.device``)
"""

from __future__ import annotations

import functools
import importlib
import numbers
from typing import Any, Callable, Sequence

import numpy as np

RewardFunction = Callable[..., Sequence[float]]

_REGISTRY: dict[str, Callable[..., RewardFunction]] = {}


class RewardError(RuntimeError):
    """A reward raised, returned the wrong number of values, or returned NaN/inf."""


def register_reward(name: str):
    """Register a reward factory under ``name``: a function (used as is when called without arguments,
    or with the keyword arguments bound) or a class (instantiated with the keyword arguments)."""

    def decorator(obj):
        if name in _REGISTRY and _REGISTRY[name] is not obj:
            raise ValueError(f"reward name {name!r} is already registered to {_REGISTRY[name]!r}")
        _REGISTRY[name] = obj
        return obj

    return decorator


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def _import_attribute(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"reward {spec!r}: expected a registered name {available_rewards()} or 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({e})") from e
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attribute!r}") from None


class RewardResources:
    """Resources offered to rewards: ``{name: factory}``, each built once, on first use.

    A factory takes this object, so it can use other resources (``device``):
    ``RewardResources(clip=lambda r: CLIPScorer.from_pretrained(..., device=r.get("device")))``; ``values`` are
    given ready-made (``RewardResources(values={"device": "cuda"})``).
    """

    def __init__(self, values: dict[str, Any] | None = None, **factories: Callable[["RewardResources"], Any]):
        self._factories = dict(factories)
        self._built: dict[str, Any] = dict(values or {})

    def __contains__(self, name: str) -> bool:
        return name in self._built or name in self._factories

    def names(self) -> list[str]:
        return sorted(set(self._built) | set(self._factories))

    def setdefault(self, name: str, value) -> None:
        """Offer ``value`` as ``name`` unless something is offered under that name already."""
        if name not in self:
            self._built[name] = value

    def get(self, name: str):
        if name not in self._built:
            if name not in self._factories:
                raise KeyError(name)
            self._built[name] = self._factories[name](self)
        return self._built[name]


def _factory(name_or_path: str):
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    if ":" in name_or_path:
        return _import_attribute(name_or_path)
    raise ValueError(f"unknown reward {name_or_path!r}; registered rewards: {available_rewards()}, "
                     "or give 'package.module:attribute'")


def reward_needs(name_or_path: str) -> tuple[str, ...]:
    """The resources a reward declares (its ``needs`` attribute; none when it has no such attribute)."""
    return tuple(getattr(_factory(name_or_path), "needs", ()))


def get_reward(name_or_path: str, resources: RewardResources | dict | None = None, **kwargs: Any) -> RewardFunction:
    """A reward callable from a registered name or ``"package.module:attribute"``.

    Classes are instantiated with ``kwargs``; functions are returned as they are, or with ``kwargs``
    bound (``functools.partial``). Each resource the reward declares in ``needs`` and ``kwargs`` does not set is
    taken from ``resources`` when offered there (a plain dict counts as ready-made values); a declared need that
    is neither given nor offered keeps the factory's own default.
    """
    factory = _factory(name_or_path)
    if resources is not None:
        if isinstance(resources, dict):
            resources = RewardResources(values=resources)
        for need in getattr(factory, "needs", ()):
            if need not in kwargs and need in resources:
                kwargs[need] = resources.get(need)
    if isinstance(factory, type):
        return factory(**kwargs)
    if not callable(factory):
        raise ValueError(f"reward {name_or_path!r} is not callable: {factory!r}")
    return functools.partial(factory, **kwargs) if kwargs else factory


def reward_name(fn: RewardFunction) -> str:
    """A readable name for logs: the function's or class's name."""
    base = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(base, "__name__", type(base).__name__)


def _as_floats(name: str, values) -> np.ndarray:
    """A list, tuple, 1-D array or tensor of real numbers as float64. Anything else is refused rather than
    converted: a dict would become its keys, a string its characters, ``"1"`` the number 1."""
    if hasattr(values, "__array__") and not isinstance(values, (str, bytes)):  # numpy arrays, torch tensors
        array = np.asarray(values)
        if array.dtype.kind not in "biuf":
            raise RewardError(f"reward {name!r} must return floats, got an array of dtype {array.dtype}")
        if array.ndim != 1:
            raise RewardError(f"reward {name!r} must return a 1-D list of floats, got shape {array.shape}")
        return array.astype(np.float64)
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {name!r} must return a list of floats, got {type(values).__name__}")
    for i, v in enumerate(values):
        if not isinstance(v, (numbers.Real, np.number)) or isinstance(v, np.complexfloating):
            raise RewardError(f"reward {name!r} must return floats, got {type(v).__name__} at position {i}: {v!r}")
    return np.asarray(values, dtype=np.float64)


def call_reward(name: str, fn: RewardFunction, completions: list[str], **columns: Any) -> np.ndarray:
    """Call one reward and check what it returns: one finite float per completion, else ``RewardError``
    naming the reward. Nothing is skipped silently."""
    try:
        values = fn(completions=completions, **columns)
    except Exception as e:  # re-raised with the reward's name; the original is chained
        raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}") from e
    values = _as_floats(name, values)
    if values.shape != (len(completions),):
        raise RewardError(f"reward {name!r} returned {values.size} values for {len(completions)} completions")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RewardError(f"reward {name!r} returned {values[i]} (not finite) for completion {i}: "
                          f"{completions[i]!r}; {int(bad.sum())} of {len(values)} values are NaN/inf")
    return values

