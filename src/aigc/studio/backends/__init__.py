"""Generator backends: the one small interface between the studio and the model families.

The studio never calls a model directly; it calls a backend, one module per modality:

- :mod:`~aigc.studio.backends.image`: :class:`ImageBackend` (VAE, GAN, diffusion checkpoints);
- :mod:`~aigc.studio.backends.text`: :class:`GenerationTextBackend` (our GPTs, SmolLM2) and
  the :class:`NGramTextBackend` test model;
- :mod:`~aigc.studio.backends.music`: :class:`MusicBackend` (music GPT checkpoints);
- :mod:`~aigc.studio.backends.common`: the errors a job raises and checkpoint discovery.

Every public name is importable from here (``from aigc.studio.backends import ImageBackend``).
"""

from aigc.studio.backends.common import (
    JobCancelled,
    UnsupportedParameter,
    _metric_card,
    find_checkpoints,
)
from aigc.studio.backends.image import (
    ImageBackend,
    ImageSettings,
    ImageSpec,
    load_image_backends,
    png_bytes,
)
from aigc.studio.backends.music import (
    MusicBackend,
    MusicPiece,
    MusicSpec,
    load_music_backends,
    quarters_per_bar,
    roll_png_bytes,
)
from aigc.studio.backends.text import (
    GenerationTextBackend,
    NGramTextBackend,
    TextBackend,
    TextStream,
    chat_prompt,
    default_text_corpus,
    load_text_backends,
    read_chatterbot_corpus,
)

__all__ = [
    "GenerationTextBackend", "ImageBackend", "ImageSettings", "ImageSpec", "JobCancelled",
    "MusicBackend", "MusicPiece", "MusicSpec", "NGramTextBackend", "TextBackend", "TextStream",
    "UnsupportedParameter", "_metric_card", "chat_prompt", "default_text_corpus",
    "find_checkpoints", "load_image_backends", "load_music_backends", "load_text_backends",
    "png_bytes", "quarters_per_bar", "read_chatterbot_corpus", "roll_png_bytes",
]
