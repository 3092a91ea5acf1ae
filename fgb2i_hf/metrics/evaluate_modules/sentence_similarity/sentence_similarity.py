"""Sentence similarity (MindEye2's caption metric) as an evaluate module; wraps fgb2i_hf.metrics.sentence_similarity.

Load by path: evaluate.load(fgb2i_hf.metrics.evaluate_module_path("sentence_similarity")).
"""

import datasets
import evaluate

from fgb2i_hf.metrics.sentence import sentence_similarity

_DESCRIPTION = """
Mean cosine similarity of sentence embeddings (sentence-transformers all-MiniLM-L6-v2 by default) of
each predicted caption and its ground-truth caption(s), as MindEye2 reports "Sentence".
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str.
    references: list of str (one ground truth per image) or list of lists of str (cosines averaged).
    encoder: optional sentence encoder (a SentenceTransformer or a callable list[str] -> (N, D)).
Returns:
    dict {"sentence_similarity": float}.
"""

_CITATION = """
@inproceedings{scotti2024mindeye2, title={MindEye2: Shared-Subject Models Enable fMRI-To-Image With 1 Hour of Data}, author={Scotti, Paul S. and others}, booktitle={ICML}, year={2024}}
@inproceedings{reimers2019sentencebert, title={Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks}, author={Reimers, Nils and Gurevych, Iryna}, booktitle={EMNLP}, year={2019}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SentenceSimilarity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
            ],
        )

    def _compute(self, predictions, references, encoder=None):
        refs = [r if isinstance(r, str) else list(r) for r in references]
        return {"sentence_similarity": sentence_similarity(list(predictions), refs, encoder=encoder)}
