"""Write a tiny random-weight causal LM folder (2-layer Llama) with a byte-level BPE tokenizer
trained here on the shipped caption templates, so JSON punctuation and key names become tokens of
several characters, as in a real vocabulary. No hub access."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ideogram_app.caption.templates import list_templates, template_text
from tests.fixtures.tiny_text_encoder import CHAT_TEMPLATE, QWEN_SPLIT, SPECIAL_TOKENS

VOCAB_SIZE = 700
PROSE = [
    "A poster for a summer jazz festival with the headline in bold letters.",
    "A photograph of a red bicycle leaning on a yellow wall, soft morning light, 35mm lens.",
    "Minimal flat illustration of a fox in a forest, écrire café naïve — 2026 © ™.",
]


def write_tiny_lm(root: str | Path, seed: int = 0) -> Path:
    folder = Path(root) / "tiny_lm"
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    corpus = [template_text(name) for name in list_templates()] + PROSE
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["vocab_size"] == bpe.get_vocab_size()
    return folder
