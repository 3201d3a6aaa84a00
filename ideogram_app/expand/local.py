"""A local Hugging Face causal-LM folder as an expansion backend, decoding under the caption
grammar: the answer is a valid, canonical caption by construction, whatever the weights."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList,
                          StoppingCriteriaList)

from .bounds import CaptionBounds
from .decoding import CaptionConstraint, TokenTable
from .grammar import Grammar, caption_grammar
from .result import BackendError


class LocalBackend:
    """Loads the folder once; `complete` may be called any number of times (the UI keeps one).

    `temperature` 0 decodes greedily; `seed` makes sampling repeatable without touching the
    caller's random state. `max_new_tokens` bounds each answer: the grammar shortens strings as the
    budget runs out, so the caption always closes within it."""

    vision = False
    name = "local"

    def __init__(self, path: str | Path, *, device: str | None = None, dtype: torch.dtype | None = None,
                 max_new_tokens: int = 1200, temperature: float = 0.7, top_p: float = 0.95, seed: int | None = None):
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise BackendError("config", f"no model folder at {folder}: the local backend needs a Hugging Face "
                               "causal-LM folder (config.json, weights, tokenizer files); pass it as --model or "
                               "IDEOGRAM_EXPAND_MODEL")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or "auto")
        except (OSError, ValueError, KeyError) as err:
            raise BackendError("config", f"cannot load the causal LM in {folder}: {err}") from None
        self.model.to(self.device).eval()
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        try:
            self.table = TokenTable(self.tokenizer, vocab_size)
        except ValueError as err:
            raise BackendError("config", f"{folder}: {err}") from None
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self._grammars: dict[CaptionBounds, Grammar] = {}

    def grammar(self, bounds: CaptionBounds) -> Grammar:
        if bounds not in self._grammars:
            self._grammars[bounds] = caption_grammar(bounds).spell_with(self.table.suffix_costs)
        return self._grammars[bounds]

    def prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        """The chat in the model's own template, or plain `role: text` turns when it has none."""
        for message in messages:
            if not isinstance(message["content"], str):
                raise BackendError("config", "the local backend reads text only; describing an image needs a vision "
                                   "model behind the OpenAI-compatible backend (--backend openai)")
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: "
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(self.device)

    def complete(self, messages: list[dict], bounds: CaptionBounds) -> str:
        ids = self.prompt_ids(messages)
        try:
            constraint = CaptionConstraint(self.table, self.grammar(bounds), ids.shape[1], self.max_new_tokens,
                                           eos_token_id=self.tokenizer.eos_token_id)
        except ValueError as err:
            raise BackendError("config", str(err)) from None
        sample = self.temperature > 0
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=sample,
                                  temperature=self.temperature if sample else None,
                                  top_p=self.top_p if sample else None, top_k=None,
                                  pad_token_id=(self.tokenizer.eos_token_id if self.tokenizer.pad_token_id is None
                                                else self.tokenizer.pad_token_id),
                                  eos_token_id=self.tokenizer.eos_token_id)
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            with torch.inference_mode():
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                    logits_processor=LogitsProcessorList([constraint]),
                                    stopping_criteria=StoppingCriteriaList([constraint.finished]))
        if not constraint.done():
            raise BackendError("protocol", "the local model stopped before the caption was complete")
        return constraint.text()
