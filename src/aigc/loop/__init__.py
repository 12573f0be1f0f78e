"""The loop that closes the chain: feedback on published items -> analysis -> a preference
dataset -> a better model (DPO, Diffusion-DPO) -> a gated, versioned promotion.

Nothing here reads the studio's database directly: the CLI and the studio hand a snapshot of it
(plain dicts: :meth:`aigc.studio.store.Store.feedback_snapshot`) to these functions, so the
layers keep pointing down (registry -> loop -> studio -> cli).
"""
