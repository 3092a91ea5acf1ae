"""Train the shipped SimNSD world (simnsd/clip, gpt2, diffusion, ldm_base, vdvae, versatile, mindeye) from scratch.

    python recipes/train_world.py --config recipes/configs/world_simnsd.yaml
    python recipes/train_world.py --config recipes/configs/world_simnsd.yaml --components diffusion ldm_base
    python recipes/train_world.py --config recipes/configs/world_simnsd.yaml --output_dir /tmp/world --unet_steps 100

Every field of ``TrainWorldConfig`` and of the component configs (``clip_*``, ``gpt2_*``, ``vae_*``, ``unet_*``,
``ldm_*``, ``vdvae_*``, ``vd_*``, ``mindeye_*``; see ``fgb2i_hf/simnsd/world/``) can be set in the YAML or on the command line (the command line wins).
Simulates the tiny SimNSD (seed 0) in ``work_dir``, trains the selected components, and writes each to
``<output_dir>/<component>/`` (default: the package's ``fgb2i_hf/simnsd/world``) with a ``world_training.json`` record.
On a shared CPU, ``OMP_WAIT_POLICY=PASSIVE`` keeps torch's two threads from spinning against other processes.
"""

from trl import TrlParser

from fgb2i_hf.simnsd.world.clip import CLIPTrainingConfig
from fgb2i_hf.simnsd.world.diffusion import UNetTrainingConfig
from fgb2i_hf.simnsd.world.gpt2 import GPT2TrainingConfig
from fgb2i_hf.simnsd.world.ldm_base import LDMBaseConfig
from fgb2i_hf.simnsd.world.mindeye import WorldMindEyeConfig
from fgb2i_hf.simnsd.world.train import TrainWorldConfig, train_world
from fgb2i_hf.simnsd.world.vae import VAETrainingConfig
from fgb2i_hf.simnsd.world.vdvae import VDVAETrainingConfig
from fgb2i_hf.simnsd.world.versatile import VersatileTrainingConfig

CONFIGS = (TrainWorldConfig, CLIPTrainingConfig, GPT2TrainingConfig, VAETrainingConfig, UNetTrainingConfig,
           LDMBaseConfig, VDVAETrainingConfig, VersatileTrainingConfig, WorldMindEyeConfig)


def summary_lines(records: dict) -> list[str]:
    lines = []
    for component, record in records.items():
        metrics = record.get("metrics", {}).get("test", record.get("metrics", {}))
        lines.append(f"simnsd/{component}: {record['train_seconds']:.0f} s, {record['size_bytes'] / 1e6:.2f} MB")
        if component == "clip":
            for kind, m in metrics.items():
                lines.append(f"  image->caption among test {kind}: top-1 {m['image_to_caption_top1']:.3f} "
                             f"(chance {m['image_to_caption_chance']:.3f}), top-5 "
                             f"{m.get('image_to_caption_top5', float('nan')):.3f} "
                             f"(chance {m.get('image_to_caption_top5_chance', float('nan')):.3f})")
        elif component == "gpt2":
            lines.append(f"  test perplexity {metrics['test_perplexity']:.2f} (COCO-like "
                         f"{metrics['test_perplexity_coco_captions']:.2f}, fine {metrics['test_perplexity_fine_captions']:.2f})")
        elif component == "diffusion":
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
        elif component == "ldm_base":  # decoders are scored on the validation split (the test split is final)
            for subject, targets in record["metrics"]["validation"].items():
                lines.append(f"  {subject}: " + ", ".join(f"{t} validation r {v['validation_column_r']:.3f}"
                                                          for t, v in targets.items()))
        elif component == "vdvae":
            lines.append("  " + ", ".join(f"{name} MSE {metrics[name]['mse']:.4f} PixCorr {metrics[name]['pixcorr']:.3f}"
                                          for name in ("all_layers", "first_k_output_sample", "mean_image")))
        elif component == "versatile":
            lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith("two_way")))
        elif component == "mindeye":
            for subject, scores in metrics.items():
                r, s = scores["retrieval"], scores["retrieval_shuffled"]
                lines.append(f"  {subject}: image / brain retrieval {r['image_retrieval']:.3f} / "
                             f"{r['brain_retrieval']:.3f} (shuffled {s['image_retrieval']:.3f} / "
                             f"{s['brain_retrieval']:.3f}, chance {r['chance']:.3f})")
            for subject, scores in record["metrics"]["reconstruction"].items():
                if isinstance(scores, dict) and "reconstruction_two_way" in scores:
                    lines.append(f"  {subject}: reconstruction two-way {scores['reconstruction_two_way']:.3f}, "
                                 f"blurry {scores['blurry_two_way']:.3f}")
    return lines


def main(argv=None):
    configs = TrlParser(CONFIGS).parse_args_and_config(argv)
    records = train_world(*configs)
    print("\n".join(summary_lines(records)))
    return records


if __name__ == "__main__":
    main()
