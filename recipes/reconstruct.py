"""Reconstruct a split through an FgB2I pipeline (LDM, Brain-Diffuser or MindEye base).

    python recipes/reconstruct.py --config recipes/configs/reconstruct_ldm_nsd.yaml --nsd_root /data/nsd
    python recipes/reconstruct.py --config recipes/configs/reconstruct_sim_tiny.yaml --w 1.0

Every field of ``fgb2i_hf.drivers.reconstruct.ReconstructConfig`` can be set in the YAML or on the command
line (the command line wins). Writes ``<output_dir>/{fgb2i,base}/<nsd_id>.png``, ``captions.jsonl``,
``grid.png`` (GT | base | FgB2I, captions under them) and ``reconstruct.yaml``; a killed run resumes.
"""

from trl import TrlParser

from fgb2i_hf.drivers.reconstruct import ReconstructConfig, reconstruct


def main(argv=None):
    (config,) = TrlParser((ReconstructConfig,)).parse_args_and_config(argv)
    summary = reconstruct(config)
    print(f"{summary['images']} images of {config.subject} ({config.split}) with the {config.base} base, "
          f"w={config.w} ({config.fusion}); {summary['reconstructed_now']} reconstructed now, "
          f"{summary['seconds_per_image']:.2f} s/image")
    print(f"images in {summary['output_dir']}, grid {summary['grid']}")


if __name__ == "__main__":
    main()
