"""PromptTokenizer: chat-template rendering, exact counts, the 2048-token limit, loading alone."""

import json

import pytest
from tokenizers import Tokenizer

from ideogram_app.model.prompt_tokenizer import MAX_TEXT_TOKENS, PromptTokenizer, PromptTooLongError
from tests.fixtures.tiny_text_encoder import write_tiny_tokenizer


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer_only_repo")  # no text_encoder/: the UI counter loads alone
    write_tiny_tokenizer(root)
    return root


@pytest.fixture(scope="module")
def tokenizer(repo):
    return PromptTokenizer(repo)


def test_prompt_is_one_user_turn_with_the_generation_prompt(tokenizer):
    prompt = '{"elements": [{"type": "text", "text": "HELLO"}]}'
    assert tokenizer.render(prompt) == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def test_token_ids_equal_the_raw_tokenizer_on_the_rendered_string(repo, tokenizer):
    raw = Tokenizer.from_file(str(repo / "tokenizer" / "tokenizer.json"))
    prompt = "A cat on a table, soft light 42"
    ids = tokenizer.token_ids(prompt)
    expected = raw.encode(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert ids == expected.ids
    assert ids[0] == raw.token_to_id("<|im_start|>")  # special tokens stay single tokens
    assert raw.token_to_id("<|im_end|>") in ids
    assert tokenizer.count(prompt) == len(ids)


def test_empty_prompt_still_gets_the_template(tokenizer):
    assert tokenizer.count("") > 0
    assert tokenizer.render("") == "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"


def test_limit_is_2048_tokens_including_the_template(tokenizer):
    overhead = tokenizer.count("")
    at_limit = "7" * (MAX_TEXT_TOKENS - overhead)  # digits are split one per token
    assert len(tokenizer.token_ids(at_limit)) == MAX_TEXT_TOKENS
    too_long = at_limit + "7"
    assert tokenizer.count(too_long) == MAX_TEXT_TOKENS + 1  # counting never raises (UI counter)
    with pytest.raises(PromptTooLongError, match=r"2049 tokens.*at most 2048.*by 1 tokens") as error:
        tokenizer.token_ids(too_long)
    assert error.value.token_count == 2049 and error.value.limit == 2048


def test_loads_from_the_tokenizer_folder_itself(repo, tokenizer):
    assert PromptTokenizer(repo / "tokenizer").token_ids("hi") == tokenizer.token_ids("hi")


def test_missing_tokenizer_and_missing_template_are_reported(tmp_path, repo):
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        PromptTokenizer(tmp_path)
    folder = write_tiny_tokenizer(tmp_path / "no_template")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat template"):
        PromptTokenizer(folder)
