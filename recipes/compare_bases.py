"""Base vs FgB2I on LDM, Brain-Diffuser and MindEye, one split, one table (the paper's main table).

    python recipes/compare_bases.py --config recipes/configs/compare_bases_nsd.yaml --nsd_root /data/nsd
    python recipes/compare_bases.py --config recipes/configs/compare_bases_sim_tiny.yaml

Every field of ``fgb2i_hf.drivers.compare.CompareBasesConfig`` can be set in the YAML or on the command
line. Writes each base's reconstructions under ``<output_dir>/<base>/`` and ``comparison.{md,json}``.
"""

from trl import TrlParser

from fgb2i_hf.drivers.compare import CompareBasesConfig, compare_bases


def main(argv=None):
    (config,) = TrlParser((CompareBasesConfig,)).parse_args_and_config(argv)
    result = compare_bases(config)
    print(result["table"])
    if result["note"]:
        print("\n" + result["note"])
    print(f"\nwritten: {config.output_dir}/comparison.md, comparison.json")


if __name__ == "__main__":
    main()
