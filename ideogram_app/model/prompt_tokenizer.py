"""Prompt -> Qwen3-VL token ids exactly as Ideogram 4 feeds them, loadable without the text encoder.

The prompt goes through the shipped chat template as one user turn holding one text part, with the
generation prompt appended; the rendered string is tokenized with `add_special_tokens=False`
(docs/model-vae-text.md, "Text features"). This is also the UI's exact token counter, so the
2048-token limit is checked here, before any model work.
"""

from pathlib import Path

from transformers import AutoTokenizer

MAX_TEXT_TOKENS = 2048


class PromptTooLongError(ValueError):
    """The templated prompt exceeds the 2048 text tokens Ideogram 4 accepts."""

    def __init__(self, token_count: int, limit: int = MAX_TEXT_TOKENS):
        self.token_count = token_count
        self.limit = limit
        super().__init__(
            f"prompt is {token_count} tokens long (chat template included); Ideogram 4 accepts at most "
            f"{limit} — shorten it by {token_count - limit} tokens"
        )


def check_token_count(token_count: int) -> None:
    """The one place the 2048-token limit is enforced (tokenizer, pipeline and app call it)."""
    if token_count > MAX_TEXT_TOKENS:
        raise PromptTooLongError(token_count)


def _tokenizer_folder(path: Path) -> Path:
    for folder in (path / "tokenizer", path):
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            return folder
    raise FileNotFoundError(f"no tokenizer found in {path / 'tokenizer'} or {path} (expected tokenizer.json)")


class PromptTokenizer:
    """Chat-template tokenizer of an Ideogram 4 repo (`path` = repo folder or its `tokenizer/`)."""

    def __init__(self, path: str | Path):
        folder = _tokenizer_folder(Path(path))
        self.folder = folder
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        if not self._tokenizer.chat_template:
            raise ValueError(f"{folder}: the tokenizer has no chat template (tokenizer_config.json 'chat_template')")

    def render(self, prompt: str) -> str:
        """The exact string the text encoder reads."""
        turn = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        return self._tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)

    def count(self, prompt: str) -> int:
        """Number of text tokens of `prompt` after templating (what the 2048 limit applies to)."""
        return len(self._tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of the templated prompt; raises `PromptTooLongError` above 2048."""
        ids = self._tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"]
        check_token_count(len(ids))
        return ids
