"""CLIP-S and RefCLIP-S (Hessel et al. 2021) as an evaluate module; wraps fgb2i_hf.metrics.clip_score.

Load by path: evaluate.load(fgb2i_hf.metrics.evaluate_module_path("clip_score")). The images (and
optionally a CLIPScorer) are passed to compute() as keyword arguments: they do not go through Arrow.
"""

import datasets
import evaluate

from fgb2i_hf.metrics.clip_score import clip_score

_DESCRIPTION = """
CLIP-S = 2.5 * max(cos(CLIP text of "A photo depicts <caption>", CLIP image), 0); RefCLIP-S = harmonic
mean of CLIP-S and the largest text-text cosine with the references (clipped at 0). Means over captions.
Default CLIP: OpenAI ViT-B/32, as BrainHub.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, one caption per image.
    references: list of lists of str, reference captions of each image (for RefCLIP-S).
    images: the images, parallel to predictions (uint8 (N, H, W, 3), PIL list or float (N, 3, H, W) in [0, 1]).
    scorer: optional fgb2i_hf.clip.CLIPScorer (default OpenAI ViT-B/32).
Returns:
    dict {"CLIP-S": float, "RefCLIP-S": float}.
"""

_CITATION = """
@inproceedings{hessel2021clipscore, title={CLIPScore: A Reference-free Evaluation Metric for Image Captioning}, author={Hessel, Jack and Holtzman, Ari and Forbes, Maxwell and Le Bras, Ronan and Choi, Yejin}, booktitle={EMNLP}, year={2021}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CLIPScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references, images=None, scorer=None):
        if images is None:
            raise ValueError("pass the images: compute(predictions=..., references=..., images=...)")
        return clip_score(list(predictions), images, [list(r) for r in references], scorer=scorer)
