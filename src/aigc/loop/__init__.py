"""The feedback loop: from the ratings people give to a better, promoted model.

Published items collect stars, comparisons, flags and implicit signals. :mod:`.report` analyses
them (ratings and win-rates with intervals, a Bradley-Terry fit, rater agreement, drift);
:mod:`.export` turns them into a versioned preference dataset (a chosen and a rejected output
for the same condition or prompt); :mod:`.improve` learns a candidate from it against a frozen
copy of the current version — :mod:`.dpo` (Direct Preference Optimization for our GPT and for a
LoRA adapter on a transformers causal LM, Rafailov et al., 2023), :mod:`.diffusion_dpo`
(Diffusion-DPO, Wallace et al., 2023) and :mod:`.reward_weighted` (the VAE: a reward-weighted
ELBO on liked images, not DPO; the GAN is refused with the reason); and :mod:`.promotion`
gates the candidate's promotion in the registry (:mod:`aigc.registry`).

Nothing here reads the studio's database: the CLI and the studio hand this package a snapshot
(plain dicts, :meth:`aigc.studio.store.Store.feedback_snapshot`), so the layers keep pointing
down (registry -> loop -> studio -> cli).
"""
