"""The feedback loop: from the ratings people give to a better candidate model.

Published items collect stars, comparisons and flags; an export turns them into preference pairs
(a chosen and a rejected output for the same condition or prompt); this package improves a model
from those pairs against a frozen copy of the current version, and the registry decides whether
the candidate is promoted. Today it holds the improvement step: :mod:`aigc.loop.dpo` (Direct
Preference Optimization for our GPT and for a LoRA adapter on a transformers causal LM, Rafailov
et al., 2023), :mod:`aigc.loop.diffusion_dpo` (Diffusion-DPO, Wallace et al., 2023) and
:mod:`aigc.loop.reward_weighted` (the VAE: a reward-weighted ELBO on liked images, not DPO); the
GAN is refused with the reason (:func:`aigc.loop.dpo.improve_unsupported`).
"""
