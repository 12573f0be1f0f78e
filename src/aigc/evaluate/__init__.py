"""Evaluation runs: sample a model, measure it, measure real data the same way, write a card.

- :mod:`~aigc.evaluate.images`: image models (FID, KID, IS-style score, precision/recall,
  conditional accuracy, memorisation) against a real reference and a real-vs-real baseline;
- :mod:`~aigc.evaluate.text`: language models (held-out perplexity, prompted continuations
  scored with BLEU/chrF/ROUGE, diversity) and the family-agnostic text contract;
- :mod:`~aigc.evaluate.perplexity`: the one perplexity, every token of a stream scored once;
- :mod:`~aigc.evaluate.text_to_image`: latent-diffusion text-to-image on emoji (scorer retrieval
  of the prompt, CLIPScore-like, FID/KID on the scorer's image features; en and zh prompts).

Music models are measured by :func:`aigc.metrics.music.evaluate_music_model`. Every public name
is importable from here (``from aigc.evaluate import evaluate_image_model``).
"""

from aigc.evaluate.images import (
    MEMORISATION_N,
    ImageEvaluation,
    evaluate_image_model,
    generate_images,
    is_class_conditional,
    measure_features,
    nearest_train_images,
    sampling_keywords,
)
from aigc.evaluate.perplexity import document_stream, scoring_windows, stream_perplexity
from aigc.evaluate.text import (
    TextEvaluation,
    continuation_pieces,
    detect_language,
    evaluate_language_model,
    evaluate_text_model,
    generate_continuations,
    pick,
    split_poem,
    text_scores,
    tokenizer_sha256,
)
from aigc.evaluate.text_to_image import TextToImageEvaluation, evaluate_text_to_image

__all__ = [
    "MEMORISATION_N", "ImageEvaluation", "TextEvaluation", "continuation_pieces",
    "detect_language", "document_stream", "evaluate_image_model", "evaluate_language_model",
    "evaluate_text_model", "generate_continuations", "generate_images", "is_class_conditional",
    "measure_features", "nearest_train_images", "pick", "sampling_keywords", "scoring_windows",
    "split_poem", "stream_perplexity", "text_scores", "tokenizer_sha256",
    "TextToImageEvaluation", "evaluate_text_to_image",
]
