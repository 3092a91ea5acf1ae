"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) as an evaluate module; wraps fgb2i_hf.metrics.caption_metrics.

Load by path (the Hub is not needed): evaluate.load(fgb2i_hf.metrics.evaluate_module_path("caption_metrics")).
"""

import datasets
import evaluate

from fgb2i_hf.metrics.captions import caption_metrics

_DESCRIPTION = """
The COCO caption evaluation (pycocoevalcap's definitions): PTB tokenisation, then corpus BLEU-1..4
("closest" reference length), METEOR 1.5 (the official jar; needs Java), ROUGE-L (beta 1.2) and
CIDEr-D (sigma 6, x10). SPICE is not included (it downloads Stanford CoreNLP).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, one caption per image.
    references: list of lists of str, all reference captions of each image.
    metrics: optional subset of "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr" ("BLEU" = all four).
    tokenizer: "auto" (default), "java" or "python".
Returns:
    dict {metric name: score}; 0-1 except CIDEr.
Examples:
    >>> m = evaluate.load(path)  # doctest: +SKIP
    >>> m.compute(predictions=["a dog runs"], references=[["a dog is running"]], metrics=["BLEU", "CIDEr"])  # doctest: +SKIP
"""

_CITATION = """
@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine Translation}, author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation}, author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation for Any Target Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(self, predictions, references, metrics=None, tokenizer="auto"):
        return caption_metrics(list(predictions), [list(r) for r in references], metrics=metrics, tokenizer=tokenizer)
