"""Fit a base method's ridge decoders per subject: LDM (z, c) or Brain-Diffuser (clip_text, clip_vision).

    python recipes/fit_decoders.py --config recipes/configs/decoders_ldm_nsd.yaml --nsd_root /data/nsd
    python recipes/fit_decoders.py --config recipes/configs/decoders_sim_tiny.yaml --base brain_diffuser

Every field of ``fgb2i_hf.drivers.fit.FitDecodersConfig`` can be set in the YAML or on the command line
(the command line wins). Writes ``<output_dir>/<subject>/<target>/`` (``RidgeDecoder.from_pretrained``),
``metrics.json``, the cached targets and ``fit_decoders.yaml`` (this run's config).
"""

from trl import TrlParser

from fgb2i_hf.drivers.fit import FitDecodersConfig, fit_decoders


def main(argv=None):
    (config,) = TrlParser((FitDecodersConfig,)).parse_args_and_config(argv)
    metrics = fit_decoders(config)
    split = config.score_split  # the decoders are scored on it (validation by default; the test split is final)
    print(f"{'subject':8} {'target':12} {'alpha (most chosen)':>20} {'cv R2':>7} {split + ' r':>14} {'R2':>7}")
    for subject, by_target in metrics.items():
        for target, scores in by_target.items():
            fit = scores["fit"]
            alpha = max(fit["alpha_counts"], key=fit["alpha_counts"].get)
            cv_r2 = "-" if fit["cv_r2_mean"] is None else f"{fit['cv_r2_mean']:.3f}"
            held_out = scores[split]
            print(f"{subject:8} {target:12} {alpha:>20} {cv_r2:>7} {held_out['column_r']:14.3f} "
                  f"{held_out['column_r2']:7.3f}")
    print(f"decoders, metrics.json and fit_decoders.yaml in {config.output_dir}")


if __name__ == "__main__":
    main()
