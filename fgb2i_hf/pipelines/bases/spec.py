"""What a base method is, in one place: :class:`BaseSpec`, and the registry of bases by name.

A base method of FgB2I (LDM, Brain-Diffuser, MindEye, or one of yours) is a spec: the diffusion backbone it runs on,
the settings of its pipeline (the call's defaults and how the text bridge fuses), the ridge decoders it fits from
betas (their targets, the models that compute the targets, the ridge grids), how its decoders' training rows are
formed (single trials or repetition averages), and its label in tables. The pipeline builder
(``fgb2i_hf.pipelines.build_pipeline``), ``fit_decoders``, ``reconstruct`` and ``compare_bases`` read the spec;
none of them names a base. A new base is one file that builds a spec and calls :func:`register_base`
(docs/architecture.md has a worked example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ...core import TINY_RANDOM


@dataclass(frozen=True)
class Backbone:
    """A diffusion backbone family: its pipeline class, its components and their classes, tiny stand-ins.

    Attributes:
        name: ``"sd"`` (Stable Diffusion v1.x) or ``"vd"`` (Versatile Diffusion), or yours.
        pipeline: the name of the FgB2I pipeline class that runs it (``FgB2IPipeline`` subclasses register their
            names), e.g. ``"FgB2ILDMPipeline"``.
        default_model: Hub id of the published weights.
        component_classes: ``() -> {subfolder: class}`` of the components loaded from a model folder.
        tiny_components: ``(seed) -> {name: component}``, random tiny components (mechanics only).
        encoder_components: the components a decoder's target models may replace (``encoders_from``).
    """

    name: str
    pipeline: str
    default_model: str
    component_classes: Callable[[], dict[str, type]]
    tiny_components: Callable[[int], dict[str, Any]]
    encoder_components: tuple[str, ...] = ("vae", "text_encoder", "tokenizer", "image_encoder",
                                           "image_feature_extractor")


@dataclass(frozen=True)
class TargetSource:
    """The models that compute some decoder targets from the stimuli (a ``TargetExtractor``).

    Attributes:
        load: ``(name_or_path, **kwargs) -> TargetExtractor`` for real models (a Hub id, a folder, ``simnsd/...``).
        tiny: ``(model_seed=, **kwargs) -> TargetExtractor`` with random tiny models (``"tiny-random"``).
        default_model: the models used when the config names none (``None``: the backbone's model).
        config_fields: the ``FitDecodersConfig`` fields this source's extractor takes as keyword arguments
            (``image_size``, ``latent_sampling``...; a field left at ``None`` keeps the extractor's own default).
    """

    load: Callable[..., Any]
    tiny: Callable[..., Any]
    default_model: str | None = None
    config_fields: tuple[str, ...] = ()

    def extractor(self, name_or_path: str, model_seed: int, **kwargs):
        """The extractor of ``name_or_path`` (``model_seed`` seeds the random weights of ``"tiny-random"``)."""
        if name_or_path == TINY_RANDOM:
            return self.tiny(model_seed=model_seed, **kwargs)
        return self.load(name_or_path, **kwargs)


@dataclass(frozen=True)
class TargetSpec:
    """One ridge decoder of a base: betas -> a target computed from the stimuli.

    Attributes:
        name: the target (``"z"``, ``"clip_text"``...): the decoder is saved as ``<decoders_dir>/<subject>/<name>``.
        component: the pipeline component holding the fitted decoder (``"z_decoder"``).
        argument: the pipeline call's argument its predictions can be given as (``"base_latents"``), e.g. when
            the whole split's predictions are rescaled together.
        alphas: the ridge grid (the base's published values).
        source: the key of the :class:`TargetSource` (in ``BaseSpec.target_sources``) computing the target.
    """

    name: str
    component: str
    argument: str
    alphas: tuple[float, ...]
    source: str = "backbone"


@dataclass(frozen=True)
class ComponentSpec:
    """A trained model a base's pipeline holds besides its backbone and ridge decoders (MindEye's model,
    Brain-Diffuser's VDVAE).

    Attributes:
        load: ``(name_or_path) -> model``.
        tiny: ``(seed=, voxel_counts=, backbone=) -> model`` with random weights fitting the backbone's components
            (``"tiny-random"``; mechanics only), or None.
        source: the target source (``BaseSpec.target_sources``) whose models this is: when a run does not name the
            component, it is the model the base's decoders were fitted with (recorded beside them).
    """

    load: Callable[[str], Any]
    tiny: Callable[..., Any] | None = None
    source: str | None = None

    def build(self, name_or_path, *, seed: int = 0, voxel_counts=None, backbone=None):
        if name_or_path == TINY_RANDOM:
            if self.tiny is None:
                raise ValueError("this component has no tiny random stand-in")
            return self.tiny(seed=seed, voxel_counts=voxel_counts, backbone=backbone)
        return self.load(name_or_path)


@dataclass(frozen=True)
class BaseSpec:
    """A base method, as every stage of FgB2I needs to know it.

    Attributes:
        name: the registry name (``"ldm"``), used in configs and folder names.
        label: its name in tables and grids (``"LDM"``).
        reference: the publication (and code) it follows.
        backbone: the diffusion backbone (:class:`Backbone`).
        scheduler: the default sampler (``"ddim"``, ``"unipc"``, ``"pndm"``, ``"dpm"``).
        targets: its ridge decoders (:class:`TargetSpec`), fitted per subject by ``fit_decoders``.
        target_sources: ``{source key: TargetSource}``; ``"backbone"`` is the backbone's own encoders.
        average_train: whether the decoders train on repetition-averaged rows (Brain-Diffuser) or single trials
            (Takagi & Nishimoto).
        rescale_predictions: whether the ridge predictions of a whole split are rescaled to the training targets'
            statistics before use (Brain-Diffuser's post-hoc step).
        pipeline_settings: keyword arguments of the pipeline's constructor that configure it for this base (saved
            in its ``model_index.json``), e.g. Versatile Diffusion's strength, text weight and fusion rule.
        components: ``{pipeline component: ComponentSpec}``, the base's own trained models (MindEye's
            ``mindeye_model``, Brain-Diffuser's ``vdvae``).
    """

    name: str
    label: str
    reference: str
    backbone: Backbone
    scheduler: str
    targets: tuple[TargetSpec, ...]
    target_sources: Mapping[str, TargetSource]
    average_train: bool
    rescale_predictions: bool = False
    pipeline_settings: Mapping[str, Any] = field(default_factory=dict)
    components: Mapping[str, ComponentSpec] = field(default_factory=dict)

    def __post_init__(self):
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"base {self.name!r}: target names repeat: {names}")
        unknown = sorted({t.source for t in self.targets} - set(self.target_sources))
        if unknown:
            raise ValueError(f"base {self.name!r}: targets use sources {unknown} that target_sources does not define")
        unknown = sorted({c.source for c in self.components.values() if c.source} - set(self.target_sources))
        if unknown:
            raise ValueError(f"base {self.name!r}: components name sources {unknown} that target_sources does not define")

    def target(self, name: str) -> TargetSpec:
        for target in self.targets:
            if target.name == name:
                return target
        raise ValueError(f"the {self.name} base has targets {[t.name for t in self.targets]}, not {name!r}")

    @property
    def decoder_components(self) -> tuple[str, ...]:
        return tuple(t.component for t in self.targets)


_BASES: dict[str, BaseSpec] = {}


def register_base(spec: BaseSpec, *, replace: bool = False) -> BaseSpec:
    """Make ``spec`` available by its name to the pipelines, ``fit_decoders``, ``reconstruct`` and ``compare``."""
    if spec.name in _BASES and not replace and _BASES[spec.name] is not spec:
        raise ValueError(f"a base named {spec.name!r} is already registered; pass replace=True to replace it")
    _BASES[spec.name] = spec
    return spec


def unregister_base(name: str) -> None:
    _BASES.pop(name, None)


def get_base(name: str) -> BaseSpec:
    if name not in _BASES:
        raise ValueError(f"unknown base {name!r}; registered bases: {available_bases()}")
    return _BASES[name]


def available_bases() -> list[str]:
    return list(_BASES)
