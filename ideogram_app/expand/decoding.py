"""Schema-constrained decoding for Hugging Face causal LMs: a `LogitsProcessor` that masks every
token which cannot continue a valid caption (`grammar.py`), and stops generation when the caption
is complete. docs/expand.md, "Constrained decoding", explains the three kinds of step.
"""
from __future__ import annotations

from bisect import bisect_left

import torch
from transformers import LogitsProcessor, StoppingCriteria

from .grammar import PLAIN_RUN, SINGLE_CHARS, Grammar

_FORCED, _WALK, _STRING = range(3)
_CACHE_LIMIT = 20_000  # states whose allowed tokens are remembered (strings make most states unique)
_FORCED_LOOKAHEAD = 256
# Escape tokens usable inside a string: the text ends on the backslash, or holds one \n or \".
_ENDS_IN_ESCAPE, _NEWLINE, _QUOTE = range(3)


class TokenTable:
    """What each token id writes when it follows other text, indexed for the decoder.

    A token's text is read as `decode([anchor, id])` minus `decode([anchor])`: decoding a token
    alone drops the leading space of SentencePiece pieces, while byte-level BPE keeps it, and this
    is right for both. Special and added tokens, and tokens that hold only part of a UTF-8 character
    (they decode to U+FFFD), are never allowed, so the output is whole characters only.

    Inside a string, tokens fall in three classes handled with tensor operations: plain runs;
    "closers" (a plain run, a quote, then anything: grouped by what follows the quote, which is
    walked once per string); and simple escapes (a plain run with one `\\n` or `\\"`, or ending on the
    backslash). Tokens with more than one escape or `\\\\` are not used inside strings; the grammar
    could take some of them, but never needs to.
    """

    def __init__(self, tokenizer, vocab_size: int):
        self.vocab_size = vocab_size
        anchor = tokenizer.encode("a", add_special_tokens=False)
        base = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
        excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        candidates = [i for i in range(min(len(tokenizer), vocab_size)) if i not in excluded]
        decoded = tokenizer.batch_decode([anchor + [i] for i in candidates], clean_up_tokenization_spaces=False)
        self.texts: list[str | None] = [None] * vocab_size
        self.ids: dict[str, list[int]] = {}
        for token_id, full in zip(candidates, decoded):
            text = full[len(base):] if full.startswith(base) else ""
            if text and "\ufffd" not in text:
                self.texts[token_id] = text
                self.ids.setdefault(text, []).append(token_id)
        self.max_len = max((len(text) for text in self.ids), default=0)
        self.sorted_all = sorted(self.ids)
        self.plain = {text for text in self.ids if PLAIN_RUN.fullmatch(text)}
        self._index_string_tokens()
        missing = [ch for ch in SINGLE_CHARS if ch not in self.ids]
        if missing:
            raise ValueError(f"the tokenizer has no token for {' '.join(map(repr, missing))} on its own; constrained "
                             "decoding spells these one token at a time to be sure every caption can be finished")
        if not any(len(text) == 1 and not text.isspace() for text in self.plain):
            raise ValueError("the tokenizer has no single-character token for a visible character")

    def _index_string_tokens(self) -> None:
        size = self.vocab_size
        self.plain_len = torch.zeros(size, dtype=torch.long)  # 0: not a run of plain characters
        self.plain_nonspace = torch.zeros(size, dtype=torch.bool)
        closers: list[tuple[int, int, bool, str]] = []
        escapes: list[tuple[int, int, bool, int]] = []
        for text, ids in self.ids.items():
            head = PLAIN_RUN.match(text).end()
            rest, head_nonspace = text[head:], bool(text[:head].strip())
            for token_id in ids:
                if not rest:
                    self.plain_len[token_id] = len(text)
                    self.plain_nonspace[token_id] = head_nonspace
                elif rest[0] == '"':
                    closers.append((token_id, head, head_nonspace, rest[1:]))
                elif rest == "\\":
                    escapes.append((token_id, len(text), head_nonspace, _ENDS_IN_ESCAPE))
                elif rest[0] == "\\" and rest[1:2] in ('n', '"') and PLAIN_RUN.fullmatch(rest[2:]):
                    nonspace = head_nonspace or bool(rest[2:].strip()) or rest[1] == '"'
                    escapes.append((token_id, len(text), nonspace, _NEWLINE if rest[1] == "n" else _QUOTE))
        self.closer_tails = sorted({tail for *_, tail in closers})
        tail_index = {tail: i for i, tail in enumerate(self.closer_tails)}
        self.closer_ids = torch.tensor([c[0] for c in closers], dtype=torch.long)
        self.closer_len = torch.tensor([c[1] for c in closers], dtype=torch.long)
        self.closer_nonspace = torch.tensor([c[2] for c in closers], dtype=torch.bool)
        self.closer_group = torch.tensor([tail_index[c[3]] for c in closers], dtype=torch.long)
        self.escape_ids = torch.tensor([e[0] for e in escapes], dtype=torch.long)
        self.escape_len = torch.tensor([e[1] for e in escapes], dtype=torch.long)
        self.escape_nonspace = torch.tensor([e[2] for e in escapes], dtype=torch.bool)
        self.escape_kind = torch.tensor([e[3] for e in escapes], dtype=torch.long)

    def suffix_costs(self, text: str) -> tuple[int, ...]:
        """For each i, the fewest tokens whose texts concatenate to `text[i:]`."""
        cost = [0] * (len(text) + 1)
        for i in range(len(text) - 1, -1, -1):
            options = [1 + cost[i + n] for n in range(1, min(self.max_len, len(text) - i) + 1)
                       if text[i:i + n] in self.ids]
            if not options:
                raise ValueError(f"the tokenizer cannot spell {text[i:]!r}")
            cost[i] = min(options)
        return tuple(cost)

    def id_tensor(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([i for text in texts for i in self.ids[text]], dtype=torch.long)


class CaptionConstraint(LogitsProcessor):
    """Masks the logits of one or more rows so each row can only write a caption the grammar
    accepts, within `max_new_tokens`. Use `finished` as the stopping criterion: rows stop as soon
    as their caption is complete, so no end-of-sequence token is needed."""

    def __init__(self, table: TokenTable, grammar: Grammar, prompt_length: int, max_new_tokens: int,
                 batch_size: int = 1, eos_token_id: int | None = None):
        need = grammar.min_left(grammar.start)
        if max_new_tokens < need:
            raise ValueError(f"max_new_tokens is {max_new_tokens}, but the shortest caption takes {need} tokens "
                             "with this tokenizer; raise it")
        self.table, self.grammar = table, grammar
        self.prompt_length, self.max_new_tokens = prompt_length, max_new_tokens
        self.states = [grammar.start] * batch_size
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.eos_token_id = eos_token_id
        self._seen = prompt_length
        self._structural = sorted(grammar.structural_chars())
        self._cache: dict[tuple, tuple] = {}
        self._closer_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._min_left: dict[tuple, int] = {}
        self.finished = _Finished(self)

    def text(self, row: int = 0) -> str:
        """The caption written by `row`: the texts of its tokens, exactly what the grammar checked."""
        return "".join(self.table.texts[i] for i in self.tokens[row])

    def done(self, row: int = 0) -> bool:
        return self.grammar.done(self.states[row])

    def catch_up(self, input_ids: torch.LongTensor) -> None:
        while self._seen < input_ids.shape[1]:
            column = input_ids[:, self._seen].tolist()
            for row, token_id in enumerate(column):
                if not self.grammar.done(self.states[row]):
                    self.states[row] = self._advance(self.states[row], token_id)
                    self.tokens[row].append(token_id)
            self._seen += 1

    def _advance(self, state: tuple, token_id: int) -> tuple:
        text = self.table.texts[token_id] if 0 <= token_id < self.table.vocab_size else None
        after = None if text is None else self._after_plain(state, text) or self.grammar.walk(state, text)
        if after is None:
            raise RuntimeError(f"token {token_id} ({text!r}) was generated although the constraint masked it; "
                               "another logits processor must have changed the masked scores")
        return after

    def _after_plain(self, state: tuple, text: str) -> tuple | None:
        """The state after a plain run inside a string, without walking it character by character."""
        inside = self.grammar.open_string(state)
        if inside is None or text not in self.table.plain:
            return None
        node, (count, nonspace, _) = inside
        nonspace = nonspace or not text.isspace()
        if count + len(text) + (0 if nonspace else 1) > node.max_chars:
            return None
        return state[0][:-1] + ((node, (count + len(text), nonspace, False)),), state[1]

    def _left(self, state: tuple) -> int:
        value = self._min_left.get(state)
        if value is None:
            if len(self._min_left) > _CACHE_LIMIT:
                self._min_left.clear()
            value = self._min_left[state] = self.grammar.min_left(state)
        return value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[1] != self.table.vocab_size:
            raise ValueError(f"the model scores {scores.shape[1]} tokens, the token table has {self.table.vocab_size}")
        self.catch_up(input_ids)
        left = self.max_new_tokens - (input_ids.shape[1] - self.prompt_length)
        mask = torch.full_like(scores, float("-inf"))
        for row, state in enumerate(self.states):
            if self.grammar.done(state):  # only in a batch, while other rows finish
                if self.eos_token_id is None:
                    mask[row] = 0
                else:
                    mask[row, self.eos_token_id] = 0
                continue
            mask[row, self.allowed(state, left).to(scores.device)] = 0
        return scores + mask

    def allowed(self, state: tuple, left: int) -> torch.Tensor:
        """Ids of the tokens that continue `state` and still leave a way to finish in `left - 1`."""
        entry = self._cache.get(state)
        if entry is None:
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
                self._closer_cache.clear()
            entry = self._cache[state] = self._compute(state)
        if entry[0] == _FORCED:
            for token_id, cost in entry[1]:
                if cost <= left - 1:
                    return torch.tensor([token_id])
            raise RuntimeError("no forced token fits the budget; the grammar's cost is inconsistent")
        if entry[0] == _WALK:
            allowed = entry[1][entry[2] <= left - 1]
        else:
            allowed = self._in_string(*entry[1:], left)
        if allowed.numel() == 0:
            raise RuntimeError("no token can continue the caption within the budget; the grammar's cost is "
                               "inconsistent")
        return allowed

    def _in_string(self, count: int, nonspace: bool, max_chars: int, multiline: bool, above: int,
                   closers: tuple[torch.Tensor, torch.Tensor], left: int) -> torch.Tensor:
        """The allowed tokens inside a string, from the string's count and the cost `above` it."""
        t = self.table
        budget = left - 1
        # a token with no visible character still leaves one to write before the closing quote
        need = torch.zeros_like(t.plain_len) if nonspace else (~t.plain_nonspace).long()
        plain = (t.plain_len > 0) & (count + t.plain_len + need <= max_chars) & (above + 1 + need <= budget)
        valid, cost = closers
        group = t.closer_group
        close = (valid[group] & (t.closer_nonspace | nonspace) & (count + t.closer_len <= max_chars)
                 & (cost[group] <= budget))
        need = (~(t.escape_nonspace | nonspace)).long()
        kind = t.escape_kind
        escape = (((kind == _ENDS_IN_ESCAPE) & (count + t.escape_len + 1 <= max_chars) & (above + 2 <= budget))
                  | ((kind == _NEWLINE) & multiline & (count + t.escape_len + need <= max_chars)
                     & (above + 1 + need <= budget))
                  | ((kind == _QUOTE) & (count + t.escape_len <= max_chars) & (above + 1 <= budget)))
        return torch.cat([plain.nonzero().squeeze(1), t.closer_ids[close], t.escape_ids[escape]])

    def _compute(self, state: tuple) -> tuple:
        forced = self._forced_tokens(state)
        if forced:
            return (_FORCED, forced)
        inside = self.grammar.open_string(state)
        if inside is None:
            found = self._walk(state, self.table.sorted_all)
            ids = self.table.id_tensor([text for text, _ in found])
            costs = torch.tensor([self._left(after) for text, after in found for _ in self.table.ids[text]],
                                 dtype=torch.long)
            return (_WALK, ids, costs)
        node, data = inside
        stack, used = state
        closed = self.grammar.step((stack[:-1] + ((node, (0, True, False)),), used), '"')
        above = self._left(state) - node.rest(data, used)
        return (_STRING, data[0], data[1], node.max_chars, node.multiline, above, self._closers(closed))

    def _closers(self, closed: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """For each text that can follow a string's closing quote inside one token: whether the
        grammar takes it after the string, and the cost left then. The same for every position in
        the string, so it is walked once per string."""
        entry = self._closer_cache.get(closed)
        if entry is None:
            tails = self.table.closer_tails
            valid = torch.zeros(len(tails), dtype=torch.bool)
            cost = torch.zeros(len(tails), dtype=torch.long)
            found = self._walk(closed, tails) + [("", closed)]  # "" is a token that ends on the quote
            index = {tail: i for i, tail in enumerate(tails)}
            for tail, after in found:
                if tail in index:
                    valid[index[tail]] = True
                    cost[index[tail]] = self._left(after)
            entry = self._closer_cache[closed] = (valid, cost)
        return entry

    def _forced_tokens(self, state: tuple) -> list[tuple[int, int]]:
        """Where the grammar allows one character only, the text is fixed: offer the tokens that are
        prefixes of the fixed run, longest first, so it is written in as few steps as possible (the
        model has no choice there anyway). Each comes with the cost left after it."""
        run, states = "", []
        while len(run) < _FORCED_LOOKAHEAD and (ch := self.grammar.forced(state)) is not None:
            state = self.grammar.step(state, ch)
            run += ch
            states.append(state)
        options = []
        for length in range(min(len(run), self.table.max_len), 0, -1):
            ids = self.table.ids.get(run[:length])
            if ids:
                options.append((ids[0], self._left(states[length - 1])))
        return options

    def _walk(self, state: tuple, texts: list[str]) -> list[tuple[str, tuple]]:
        """(text, state after it) for every text of the sorted list `texts` the grammar accepts from
        `state`. Walks the sorted list as a trie: texts sharing a prefix are contiguous, so a prefix
        the grammar refuses skips its whole block with one bisection. Outside an open string only the
        grammar's structural characters can come next, so a wide block is entered at those only."""
        found: list[tuple[str, tuple]] = []
        structural = self._structural
        stack = [(0, 0, len(texts), state)]
        while stack:
            depth, low, high, current = stack.pop()
            i = low
            while depth == 0 and i < high and not texts[i]:  # an empty text spells nothing
                i += 1
            if depth and len(texts[i]) == depth:
                found.append((texts[i], current))
                i += 1
            if i >= high:
                continue
            prefix = texts[i][:depth]
            if high - i > 2 * len(structural) and self.grammar.open_string(current) is None:
                for ch in structural:
                    start = bisect_left(texts, prefix + ch, i, high)
                    end = bisect_left(texts, prefix + chr(ord(ch) + 1), start, high)
                    if start < end and (after := self.grammar.step(current, ch)) is not None:
                        stack.append((depth + 1, start, end, after))
                continue
            while i < high:
                text = texts[i]
                ch = text[depth]
                end = high if ord(ch) == 0x10FFFF else bisect_left(texts, prefix + chr(ord(ch) + 1), i, high)
                after = self.grammar.step(current, ch)
                if after is not None:
                    stack.append((depth + 1, i, end, after))
                i = end
        return found


class _Finished(StoppingCriteria):
    """Stops each row as soon as its caption is complete."""

    def __init__(self, constraint: CaptionConstraint):
        self.constraint = constraint

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.constraint.catch_up(input_ids)
        return torch.tensor([self.constraint.grammar.done(state) for state in self.constraint.states],
                            device=input_ids.device)
