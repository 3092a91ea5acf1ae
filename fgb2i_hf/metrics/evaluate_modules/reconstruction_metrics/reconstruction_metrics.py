"""MindEye's image-reconstruction metrics as an evaluate module; wraps fgb2i_hf.metrics.reconstruction_metrics.

Load by path: evaluate.load(fgb2i_hf.metrics.evaluate_module_path("reconstruction_metrics")). Images go
through Arrow as nested float lists, which costs time and memory for large sets: for the full NSD
test set call fgb2i_hf.metrics.reconstruction_metrics directly.
"""

import datasets
import evaluate

from fgb2i_hf.metrics.reconstruction import reconstruction_metrics

_DESCRIPTION = """
PixCorr, SSIM, two-way identification with AlexNet(2), AlexNet(5), InceptionV3 and CLIP (chance 0.5),
and mean correlation distance with EffNet-B and SwAV (lower is better), with MindEye's resizes, layers
and normalisations.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructions, float (N, 3, H, W) in [0, 1].
    references: ground-truth images, float (N, 3, H, W) in [0, 1].
    feature_extractors: optional {"alexnet"|"inception"|"clip"|"effnet"|"swav": FeatureModel}
        (default: the pretrained networks).
    metrics, batch_size, device, antialias: as fgb2i_hf.metrics.reconstruction_metrics.
Returns:
    dict {column: value}.
"""

_CITATION = """
@inproceedings{scotti2023mindeye, title={Reconstructing the Mind's Eye: fMRI-to-Image with Contrastive Learning and Diffusion Priors}, author={Scotti, Paul S. and others}, booktitle={NeurIPS}, year={2023}}
"""

_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReconstructionMetrics(evaluate.Metric):
    def _info(self):
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
        )
        # Hand the images back as numpy arrays, not nested Python lists. MetricInfo's constructor only
        # allows "numpy" for flat Value features, but datasets formats these nested lists fine.
        info.format = "numpy"
        return info

    def _compute(self, predictions, references, feature_extractors=None, metrics=None, batch_size=32,
                 device=None, antialias=False):
        return reconstruction_metrics(references, predictions, feature_extractors=feature_extractors,
                                      metrics=metrics, batch_size=batch_size, device=device,
                                      antialias=antialias, progress=False)
