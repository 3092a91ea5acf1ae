"""Drivers: one place for every run, each a config dataclass (trl style: ``help`` metadata, YAML + CLI through
``TrlParser``) and a function the thin scripts in ``recipes/`` call.

| run | module | recipe |
|---|---|---|
| fine captions, their audit | :mod:`.captions` (``enhance_nsd``, ``audit_nsd``) | ``enhance_captions.py``, ``audit_captions.py`` |
| stage 1, cross-entropy | :mod:`.ce` (``run_ce``) | ``train_ce.py`` |
| stage 2, REINFORCE | :mod:`.rl` (``run_rl``) | ``train_rl.py`` |
| caption evaluation | :mod:`.caption_eval` (``evaluate_captions``) | ``evaluate_captions.py`` |
| base decoders | :mod:`.fit` (``fit_decoders``) | ``fit_decoders.py`` |
| reconstructions | :mod:`.reconstruct` (``reconstruct``) | ``reconstruct.py`` |
| image metrics | :mod:`.evaluate_reconstructions` | ``evaluate_reconstructions.py`` |
| base vs FgB2I table | :mod:`.compare` (``compare_bases``) | ``compare_bases.py`` |
| MindEye | :mod:`.mindeye` (``run_mindeye``) | ``train_mindeye.py`` |

Drivers sit above the methods (training, rl, pipelines) and below SimNSD: they import nothing of
:mod:`fgb2i_hf.simnsd`. Modules are imported on demand (``fgb2i_hf.drivers.ce``), so one run loads only its own.
"""
