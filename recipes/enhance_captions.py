"""FgB2I stage 1: fine-grained captions of the NSD stimuli from a vision-language model (LLaVA-1.5 by default).

    python recipes/enhance_captions.py --config recipes/configs/enhance_captions_nsd.yaml --nsd_root /data/nsd
    python recipes/enhance_captions.py --config recipes/configs/enhance_captions_sim_tiny.yaml

Every field of ``fgb2i_hf.drivers.captions.EnhanceCaptionsConfig`` can be set in the YAML or on the command line
(the command line wins). Appends to ``output`` (JSONL, one record per image) and resumes: a rerun captions only
the images not yet captioned with the same settings. Exits with status 1 when some images could not be read.
"""

import sys

from trl import TrlParser

from fgb2i_hf.drivers.captions import EnhanceCaptionsConfig, enhance_nsd


def main(argv=None) -> int:
    (config,) = TrlParser((EnhanceCaptionsConfig,)).parse_args_and_config(argv)
    summary = enhance_nsd(config)
    print(summary)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
