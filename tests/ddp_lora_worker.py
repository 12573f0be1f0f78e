"""`finetune_chat_lora` on a tiny random Llama, as one process or under torchrun (run by
tests/test_distributed_text.py; not collected by pytest). argv: OUT_DIR."""

from __future__ import annotations

import sys

import torch


class _Hf:
    def convert_tokens_to_ids(self, token: str) -> int:
        assert token == "<|im_end|>"
        return 1


class ByteTokenizer:
    """Bytes + 3; 0 starts a user turn, 1 is <|im_end|>, 2 starts the assistant's turn."""

    hf = _Hf()

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return [0, *self.encode(messages[-1]["content"]), 1, 2]


def main(out: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from aigc.distributed import init_from_env, shutdown
    from aigc.finetune import finetune_chat_lora

    torch.set_num_threads(1)
    init_from_env("cpu")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=259, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))
    # Answers of 2 to 17 tokens: the per-process token counts differ, so a loss averaged per
    # process (not over the global token count) would drift from one process.
    pairs = [(f"what is {a} plus {b}?", f"{a + b}" + "!" * (3 * a + b)) for a in range(6)
             for b in range(4)]
    try:
        finetune_chat_lora(pairs[:20], pairs[20:], out, steps=6, batch_size=4, lr=0.05, rank=4,
                           alpha=8.0, dropout=0.0, seed=3, base=(model, ByteTokenizer()))
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
