"""Caption and image-reconstruction metrics, with the field's exact definitions (docs/metrics.md).

Captions: :func:`caption_metrics` (BLEU-1..4, METEOR, ROUGE-L, CIDEr as the COCO caption evaluation),
:func:`object_metrics` (CHAIR-style object P/R/F1), :func:`clip_score` (CLIP-S, RefCLIP-S),
:func:`sentence_similarity` (MindEye2's sentence-embedding cosine).

Images: :func:`reconstruction_metrics` (MindEye's eight columns) and its parts :func:`pixcorr`,
:func:`ssim`, :func:`two_way_identification`, :func:`mean_correlation_distance`, with injectable
:class:`FeatureModel` networks (:func:`load_feature_models`).

Tables: :func:`format_table`, :func:`write_table`. ``evaluate`` modules: :func:`evaluate_module_path`.
"""

from .captions import CAPTION_METRICS, caption_metrics
from .clip_score import clip_score, clip_score_per_caption
from .coco_caption import cider_d_scores, corpus_bleu, rouge_l_scores
from .evaluate_modules import EVALUATE_MODULES, evaluate_module_path, evaluate_module_paths
from .feature_models import FeatureModel, load_feature_models, load_swav_state_dict, tiny_feature_models
from .image import mean_correlation_distance, pixcorr, ssim, two_way_identification
from .meteor import MeteorScorer
from .objects import object_metrics
from .ptb import ptb_tokenize
from .reconstruction import RECONSTRUCTION_METRICS, reconstruction_metrics
from .sentence import sentence_similarity
from .table import format_table, table_json, write_table

__all__ = [
    "CAPTION_METRICS", "EVALUATE_MODULES", "FeatureModel", "MeteorScorer", "RECONSTRUCTION_METRICS",
    "caption_metrics", "cider_d_scores", "clip_score", "clip_score_per_caption", "corpus_bleu",
    "evaluate_module_path", "evaluate_module_paths", "format_table", "load_feature_models", "load_swav_state_dict",
    "mean_correlation_distance", "object_metrics", "pixcorr", "ptb_tokenize", "reconstruction_metrics",
    "rouge_l_scores", "sentence_similarity", "ssim", "table_json", "tiny_feature_models", "two_way_identification",
    "write_table",
]
