"""The caption format as a character-level pushdown recognizer, for schema-constrained decoding.

Why not a generic JSON-Schema engine: `schema.json` cannot say key order, `min < max` inside a bbox,
"no `\\uXXXX`" or "compact", and `verify` checks all of those. This recognizer accepts exactly the
canonical text of a valid caption (trained key order, compact separators, upper-case hex, literal
characters, ordered non-empty boxes, no two identical elements), so whatever a model picks among the
characters it allows, the result passes `verify` with no issue at all (docs/expand.md,
"Constrained decoding").

A state is `(frames, used)`: a stack of `(node, data)` frames from the root down, and the boxes
already written (elements must differ, and the last bbox value is what can tell them apart). States
are tuples, so a decoder can cache work per state.

Termination: every string, list and number is bounded, and `min_left(state)` is the number of tokens
a fixed completion strategy needs from `state` (a `Lit` at its cheapest tokenization, everything else
one character per token). That strategy's next token always lowers the count by exactly one, so a
decoder that only allows tokens leaving `min_left <= tokens left - 1` can always finish in budget.
"""
from __future__ import annotations

import re
from typing import Callable

from ideogram_app.caption.rules import BBOX_GRID, ELEMENT_PALETTE_MAX, STYLE_PALETTE_MAX

from .bounds import CaptionBounds

# What a node's `feed` answers (None: the character is refused).
STAY, DONE, PUSH, BECOME, SKIP = range(5)
DIGITS = "0123456789"
HEX = "0123456789ABCDEF"
# Characters the completion strategy spells one per token; a tokenizer must have each as a token.
SINGLE_CHARS = '"#[],' + HEX


# A run of characters `is_plain` accepts (the same set, for whole token texts at once).
PLAIN_RUN = re.compile(r'[^"\\\x00-\x1f\x7f-\x9f\ufffd\ud800-\udfff]*')


def is_plain(ch: str) -> bool:
    """A character allowed as itself inside a JSON string of a caption: no quote or backslash (those
    need escapes), no control characters, no U+FFFD (a byte-level token cut inside a UTF-8 sequence
    decodes to it) and no lone surrogates (not encodable)."""
    code = ord(ch)
    return (code >= 0x20 and not 0x7F <= code <= 0x9F and ch != '"' and ch != "\\" and ch != "\ufffd"
            and not 0xD800 <= code <= 0xDFFF)


def smallest(prefix: str, low: int, high: int, excluded: tuple[int, ...] = ()) -> int | None:
    """The smallest whole number in [low, high], not in `excluded`, written without leading zeros
    and starting with `prefix`; None when there is none. The smallest such number is also the
    shortest, which is what the completion strategy wants."""
    if prefix == "0":
        return 0 if low <= 0 <= high and 0 not in excluded else None
    if prefix == "":
        value = low
        while value <= high and value in excluded:
            value += 1
        return value if value <= high else None
    base, scale = int(prefix), 1
    while base * scale <= high:
        value, end = max(low, base * scale), min(high, (base + 1) * scale - 1)
        while value <= end and value in excluded:
            value += 1
        if value <= end:
            return value
        scale *= 10
    return None


class Node:
    """One piece of the grammar. `first` holds the characters that can start it; `dynamic` is True
    when its cost depends on the boxes already written."""

    first: frozenset[str] = frozenset()
    dynamic = False
    _start_cost: int | None = None

    def children(self) -> tuple[Node, ...]:
        return ()

    def start(self):
        return 0

    def feed(self, data, ch: str, used: tuple):
        raise NotImplementedError

    def child_done(self, data):
        raise NotImplementedError(f"{type(self).__name__} has no children")

    def rest(self, data, used: tuple) -> int:
        """Tokens the completion strategy needs to finish this node from `data`, not counting a
        child in progress (that child's own frame counts it)."""
        raise NotImplementedError

    def forced(self, data) -> str | None:
        """The only character that may come next, or None when there is a choice."""
        return None

    def start_rest(self, used: tuple) -> int:
        if self.dynamic:
            return self.rest(self.start(), used)
        if self._start_cost is None:
            self._start_cost = self.rest(self.start(), ())
        return self._start_cost


class Lit(Node):
    """Fixed text (keys, punctuation). `suffix_cost[i]` is the fewest tokens that spell `text[i:]`;
    until a vocabulary sets it (`Grammar.spell_with`), one token per character."""

    def __init__(self, text: str):
        self.text = text
        self.first = frozenset(text[0])
        self.suffix_cost = tuple(range(len(text), -1, -1))

    def feed(self, i, ch, used):
        if ch != self.text[i]:
            return None
        return (DONE, None) if i + 1 == len(self.text) else (STAY, i + 1)

    def rest(self, i, used):
        return self.suffix_cost[i]

    def forced(self, i):
        return self.text[i]


class Str(Node):
    """A JSON string with at least one non-space character and at most `max_chars` characters of
    source between the quotes. Escapes: `\\"` always, `\\n` only when `multiline` (a text element's
    line break); no `\\\\`, so the value can never hold the characters `\\uXXXX` (`literal_escape`)."""

    first = frozenset('"')

    def __init__(self, max_chars: int, multiline: bool = False):
        self.max_chars = max_chars
        self.multiline = multiline

    def start(self):
        return None  # before the opening quote; then (count, has non-space, escape pending)

    def feed(self, data, ch, used):
        if data is None:
            return (STAY, (0, False, False)) if ch == '"' else None
        count, nonspace, escape = data
        if escape:
            if ch == '"':
                new = (count + 1, True, False)
            elif ch == "n" and self.multiline:
                new = (count + 1, nonspace, False)
            else:
                return None
        elif ch == '"':
            return (DONE, None) if nonspace else None
        elif ch == "\\":
            new = (count + 1, nonspace, True)
        elif is_plain(ch):
            new = (count + 1, nonspace or not ch.isspace(), False)
        else:
            return None
        # Room must remain for what the string still needs: one non-space character, or the
        # character that ends a pending escape (`"`, which is one).
        if new[0] + (1 if new[2] or not new[1] else 0) > self.max_chars:
            return None
        return (STAY, new)

    def rest(self, data, used):
        if data is None:
            return 3  # '"', a non-space character, '"'
        _, nonspace, escape = data
        return 2 if escape or not nonspace else 1

    def forced(self, data):
        return '"' if data is None else None


class Color(Node):
    """`"#RRGGBB"` with upper-case hex."""

    first = frozenset('"')

    def feed(self, i, ch, used):
        ok = ch == '"' if i in (0, 8) else ch == "#" if i == 1 else ch in HEX
        if not ok:
            return None
        return (DONE, None) if i == 8 else (STAY, i + 1)

    def rest(self, i, used):
        return 9 - i

    def forced(self, i):
        return '"' if i in (0, 8) else "#" if i == 1 else None


class BBox(Node):
    """`[y_min,x_min,y_max,x_max]` on the 0-1000 grid with y_min < y_max and x_min < x_max (no
    empty boxes). The box must differ from every box already written: x_max may not repeat one
    whose first three values match. x_min stays at most 999 - max_elements, so at least
    max_elements values remain for x_max and the exclusion can never leave none."""

    first = frozenset("[")
    dynamic = True

    def __init__(self, x_min_cap: int):
        self.x_min_cap = x_min_cap

    def start(self):
        return (-1, "", ())  # (index of the number being read, its digits, the numbers read)

    def _range(self, k: int, values: tuple, used: tuple) -> tuple[int, int, tuple[int, ...]]:
        if k == 0:
            return 0, BBOX_GRID - 1, ()
        if k == 1:
            return 0, self.x_min_cap, ()
        if k == 2:
            return values[0] + 1, BBOX_GRID, ()
        return values[1] + 1, BBOX_GRID, tuple(box[3] for box in used if box[:3] == values)

    def feed(self, data, ch, used):
        k, digits, values = data
        if k < 0:
            return (STAY, (0, "", ())) if ch == "[" else None
        low, high, excluded = self._range(k, values, used)
        if ch in DIGITS:
            digits += ch
            if digits[0] == "0" and len(digits) > 1 or smallest(digits, low, high, excluded) is None:
                return None
            return (STAY, (k, digits, values))
        if ch != ("]" if k == 3 else ",") or not digits:
            return None
        value = int(digits)
        if not low <= value <= high or value in excluded:
            return None
        values += (value,)
        return (DONE, used + (values,)) if k == 3 else (STAY, (k + 1, "", values))

    def rest(self, data, used):
        k, digits, values = data
        total = 1 if k < 0 else 0
        k = max(k, 0)
        while k < 4:  # the strategy writes the smallest allowed value of each remaining number
            low, high, excluded = self._range(k, values, used)
            value = smallest(digits, low, high, excluded)
            total += len(str(value)) - len(digits) + 1  # its digits, then ',' or ']'
            values, digits, k = values + (value,), "", k + 1
        return total

    def forced(self, data):
        return "[" if data[0] < 0 else None


class Seq(Node):
    """Items one after another. `data` is the index of the next item to start."""

    def __init__(self, *items: Node):
        if isinstance(items[0], Opt):
            raise ValueError("a Seq may not start with an Opt: its first character would be ambiguous")
        self.items = items
        self.first = items[0].first
        self.dynamic = any(item.dynamic for item in items)

    def children(self):
        return self.items

    def feed(self, i, ch, used):
        item = self.items[i]
        return (PUSH, i + 1, (item, item.start()))

    def child_done(self, i):
        return (DONE, None) if i == len(self.items) else (STAY, i)

    def rest(self, i, used):
        return sum(item.start_rest(used) for item in self.items[i:])

    def forced(self, i):
        item = self.items[i]
        return item.forced(item.start())


class Choice(Node):
    """One of several branches, told apart by their first character (checked here)."""

    def __init__(self, *branches: Node):
        seen: set[str] = set()
        for branch in branches:
            if seen & branch.first:
                raise ValueError(f"Choice branches share first characters {sorted(seen & branch.first)}")
            seen |= branch.first
        self.branches = branches
        self.first = frozenset(seen)
        self.dynamic = any(branch.dynamic for branch in branches)

    def children(self):
        return self.branches

    def start(self):
        return None

    def feed(self, data, ch, used):
        for branch in self.branches:
            if ch in branch.first:
                return (BECOME, (branch, branch.start()))
        return None

    def rest(self, data, used):
        return min(branch.start_rest(used) for branch in self.branches)


class Opt(Node):
    """An optional part, present when the next character can start it. The grammar is written so
    that what may follow never starts with the same character."""

    def __init__(self, inner: Node):
        self.inner = inner
        self.first = inner.first
        self.dynamic = inner.dynamic

    def children(self):
        return (self.inner,)

    def start(self):
        return None

    def feed(self, data, ch, used):
        return (BECOME, (self.inner, self.inner.start())) if ch in self.inner.first else (SKIP,)

    def rest(self, data, used):
        return 0


class Array(Node):
    """`[item,item,...]` with `low` to `high` items. `data` is (items started, phase): 0 before
    '[', 1 just after '[', 2 after an item, 3 just after ','."""

    first = frozenset("[")

    def __init__(self, item: Node, low: int, high: int):
        if item.dynamic and low > 1:
            raise ValueError("an Array of items whose cost depends on earlier items may require at most one")
        self.item, self.low, self.high = item, low, high
        self.dynamic = item.dynamic

    def children(self):
        return (self.item,)

    def start(self):
        return (0, 0)

    def feed(self, data, ch, used):
        count, phase = data
        if phase == 0:
            return (STAY, (0, 1)) if ch == "[" else None
        if phase == 2:
            if ch == "," and count < self.high:
                return (STAY, (count, 3))
            return (DONE, None) if ch == "]" and count >= self.low else None
        if phase == 1 and ch == "]" and self.low == 0:
            return (DONE, None)
        if ch in self.item.first and count < self.high:
            return (PUSH, (count + 1, 2), (self.item, self.item.start()))
        return None

    def child_done(self, data):
        return (STAY, data)

    def rest(self, data, used):
        count, phase = data
        item = self.item.start_rest(used)
        if phase == 3:
            return item + self._after(count + 1, item)
        if phase == 2:
            return self._after(count, item)
        body = 1 if self.low == 0 else self.low * item + self.low  # items, commas between, ']'
        return body + (1 if phase == 0 else 0)

    def _after(self, count: int, item: int) -> int:
        return max(self.low - count, 0) * (item + 1) + 1

    def forced(self, data):
        return "[" if data[1] == 0 else None


def _finish(frames: list) -> None:
    """Tell the parents that the top frame's node is complete, popping those that complete too."""
    while frames:
        node, data = frames[-1]
        answer = node.child_done(data)
        if answer[0] == STAY:
            frames[-1] = (node, answer[1])
            return
        frames.pop()


class Grammar:
    """A root node plus the operations a decoder needs on states."""

    def __init__(self, root: Node):
        self.root = root
        self.start = (((root, root.start()),), ())

    def nodes(self) -> list[Node]:
        found, stack = [], [self.root]
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(node.children())
        return found

    def spell_with(self, suffix_costs: Callable[[str], tuple[int, ...]]) -> Grammar:
        """Set each fixed text's cost to the fewest tokens of a vocabulary that spell it."""
        for node in self.nodes():
            if isinstance(node, Lit):
                node.suffix_cost = suffix_costs(node.text)
            node._start_cost = None
        return self

    def literal_texts(self) -> set[str]:
        return {node.text for node in self.nodes() if isinstance(node, Lit)}

    def structural_chars(self) -> frozenset[str]:
        """Every character that can come next in a state that is not inside an open string: fixed
        text, digits, hex, the quote that opens a string and the characters that end an escape."""
        return frozenset("".join(self.literal_texts())) | frozenset(SINGLE_CHARS + DIGITS + "n")

    @staticmethod
    def step(state: tuple, ch: str) -> tuple | None:
        """The state after `ch`, or None when `ch` cannot come next."""
        stack, used = state
        frames = list(stack)
        while frames:
            node, data = frames[-1]
            answer = node.feed(data, ch, used)
            if answer is None:
                return None
            tag = answer[0]
            if tag == STAY:
                frames[-1] = (node, answer[1])
                return tuple(frames), used
            if tag == DONE:
                if answer[1] is not None:
                    used = answer[1]
                frames.pop()
                _finish(frames)
                return tuple(frames), used
            if tag == PUSH:
                frames[-1] = (node, answer[1])
                frames.append(answer[2])
            elif tag == BECOME:
                frames[-1] = answer[1]
            else:  # SKIP: an absent optional part; the character belongs to what follows
                frames.pop()
                _finish(frames)
        return None  # the document is complete: nothing may follow

    @classmethod
    def walk(cls, state: tuple, text: str) -> tuple | None:
        for ch in text:
            state = cls.step(state, ch)
            if state is None:
                return None
        return state

    @staticmethod
    def done(state: tuple) -> bool:
        return not state[0]

    @staticmethod
    def min_left(state: tuple) -> int:
        stack, used = state
        return sum(node.rest(data, used) for node, data in stack)

    @staticmethod
    def forced(state: tuple) -> str | None:
        stack = state[0]
        if not stack:
            return None
        node, data = stack[-1]
        return node.forced(data)

    @staticmethod
    def open_string(state: tuple) -> tuple[Str, tuple] | None:
        """(node, data) when the state is inside a string with no escape pending, else None: the
        decoder's fast path, where every run of plain characters that fits is allowed."""
        stack = state[0]
        if not stack:
            return None
        node, data = stack[-1]
        if isinstance(node, Str) and data is not None and not data[2]:
            return node, data
        return None


def _key(name: str, first: bool = False) -> str:
    return ('{"' if first else ',"') + name + '":'


def caption_grammar(bounds: CaptionBounds) -> Grammar:
    """The canonical caption with every part filled in: high_level_description, a style block
    (photo or art_style, optional palette), background and 1..max_elements elements, each with a
    bbox (a caption with boxes is what expansion is for) and an optional palette. Keys are spelled
    in the trained order (docs/caption.md, "The format")."""
    b = bounds

    def field():
        return Str(b.max_field_chars)

    def palette(limit: int) -> Node:
        return Opt(Seq(Lit(_key("color_palette")), Array(Color(), 1, limit)))

    style = Seq(Lit(_key("aesthetics", first=True)), field(), Lit(_key("lighting")), field(), Lit(',"'),
                Choice(Seq(Lit('photo":'), field(), Lit(_key("medium")), field()),
                       Seq(Lit('medium":'), field(), Lit(_key("art_style")), field())),
                palette(STYLE_PALETTE_MAX), Lit("}"))
    x_min_cap = BBOX_GRID - 1 - b.max_elements
    element = Seq(Lit('{"type":"'),
                  Choice(Seq(Lit('obj",'), Lit('"bbox":'), BBox(x_min_cap), Lit(_key("desc")), Str(b.max_desc_chars)),
                         Seq(Lit('text",'), Lit('"bbox":'), BBox(x_min_cap), Lit(_key("text")),
                             Str(b.max_text_chars, multiline=True), Lit(_key("desc")), Str(b.max_desc_chars))),
                  palette(ELEMENT_PALETTE_MAX), Lit("}"))
    root = Seq(Lit(_key("high_level_description", first=True)), Str(b.max_desc_chars),
               Lit(_key("style_description")), style,
               Lit(_key("compositional_deconstruction") + _key("background", first=True)), Str(b.max_desc_chars),
               Lit(_key("elements")), Array(element, 1, b.max_elements), Lit("}}"))
    return Grammar(root)
