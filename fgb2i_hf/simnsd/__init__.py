"""SimNSD: a simulated NSD in the raw layout, its scenes, and the small world models trained on it.

- ``simulate_nsd(root)`` writes SimNSD in NSD's raw layout (``simulate.py``); ``noiseless_response`` gives its
  ground truth, ``scene_features_of`` the encoding model's features, ``load_scenes`` the drawn scenes.
- ``scenes``: the procedural scenes of COCO objects, their images and their captions.
- ``world``: the shipped world models (``simnsd/clip``, ``simnsd/gpt2``, ``simnsd/diffusion``, ...) and the code that
  trains them (``recipes/train_world.py``).

This is the top library layer: it may use everything below it (data, models, pipelines, drivers); nothing in
the library imports it. Tests, ``examples/`` and ``recipes/`` do.
"""

from .simulate import (
    SimNSDConfig,
    load_scenes,
    load_simnsd_config,
    noiseless_response,
    scene_features_of,
    simulate_nsd,
)

__all__ = ["SimNSDConfig", "load_scenes", "load_simnsd_config", "noiseless_response", "scene_features_of",
           "simulate_nsd"]
