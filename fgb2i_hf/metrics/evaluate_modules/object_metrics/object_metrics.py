"""Object precision/recall/F1 with CHAIR-style matching as an evaluate module; wraps fgb2i_hf.metrics.object_metrics.

Load by path: evaluate.load(fgb2i_hf.metrics.evaluate_module_path("object_metrics")).
"""

import datasets
import evaluate

from fgb2i_hf.metrics.objects import object_metrics

_DESCRIPTION = """
COCO objects named in each caption (CHAIR matching rules, Rohrbach et al. 2018) against the image's
ground-truth objects: micro-averaged precision, recall and F1 over the corpus, and the mean per-caption
F1 (f1_macro).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, one caption per image.
    references: list of lists of str, the ground-truth COCO object names of each image.
Returns:
    dict with precision, recall, f1 (micro) and f1_macro.
"""

_CITATION = """
@inproceedings{rohrbach2018object, title={Object Hallucination in Image Captioning}, author={Rohrbach, Anna and Hendricks, Lisa Anne and Burns, Kaylee and Darrell, Trevor and Saenko, Kate}, booktitle={EMNLP}, year={2018}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ObjectMetrics(evaluate.Metric):
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

    def _compute(self, predictions, references):
        return object_metrics(list(predictions), [list(r) for r in references])
