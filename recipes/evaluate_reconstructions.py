"""Score folders of reconstructions with the eight image metrics (MindEye's definitions).

    python recipes/evaluate_reconstructions.py --config recipes/configs/evaluate_reconstructions_sim_tiny.yaml
    python recipes/evaluate_reconstructions.py --nsd_root /data/nsd --output out/table \
        --reconstructions "LDM=out/ldm/base" "LDM + FgB2I=out/ldm/fgb2i" --baseline LDM

Every field of ``fgb2i_hf.drivers.evaluate_reconstructions.EvaluateReconstructionsConfig`` can be set in the YAML or on the
command line. Writes ``<output>.md`` (deltas against ``baseline``) and ``<output>.json``.
"""

from trl import TrlParser

from fgb2i_hf.drivers.evaluate_reconstructions import EvaluateReconstructionsConfig, evaluate_reconstructions


def main(argv=None):
    (config,) = TrlParser((EvaluateReconstructionsConfig,)).parse_args_and_config(argv)
    evaluate_reconstructions(config)
    with open(config.output + ".md", encoding="utf-8") as f:
        print(f.read())
    print(f"written: {config.output}.md, {config.output}.json")


if __name__ == "__main__":
    main()
