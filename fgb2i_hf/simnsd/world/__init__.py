"""The SimNSD world: small models trained once on SimNSD and shipped inside the package.

A name ``simnsd/<component>`` (``simnsd/gpt2``, ``simnsd/clip``, ...) resolves to the packaged folder
``fgb2i_hf/simnsd/world/<component>`` (``fgb2i_hf.core.resolve_pretrained``), so every loader takes the same code
path for the shipped world as for a real model on the Hub (``gpt2``, ``CompVis/stable-diffusion-v1-4``) or a
local folder. The modules here train and evaluate the components (``recipes/train_world.py``).
"""
