"""verify / parse / to_json over random JSON values (fully random, and caption-shaped dicts whose
every field takes every JSON type): `verify` never raises, `parse` and `to_json` raise only their
documented errors, issues are printable, and the three agree with each other:

- `verify` reports a structural code      <=> `parse` raises CaptionFormatError
- `verify` reports json_syntax             <=> `parse` raises CaptionSyntaxError
- `verify` reports plain_text              <=> `parse` returns PlainText (prose; with a lone surrogate
                                               in it verify adds wrong_type)
- whatever `to_json` returns is valid JSON (no NaN/Infinity) that encodes as UTF-8.

Each value is tried as a Python value and as one text form (compact, pretty, ASCII-escaped, raw
non-ASCII, fenced, double-encoded).

Volume: 2 x BULK_EXAMPLES values come from hypothesis byte strings decoded by `Choices` (one draw
per value, ~0.5 ms, where hypothesis' own recursive strategies spend ~5 ms drawing a value; bytes
still shrink, toward the first option of every choice). The strings have a fixed size because
hypothesis draws variable-length ones mostly a few bytes long, which would leave most choices at
their first option. A smaller run of hypothesis' own
strategies adds its edge-case search (floats, Unicode). Together over 20,000 values in ~20 s.
"""
import json
import math
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ideogram_app.caption import Caption, CaptionFormatError, CaptionSyntaxError, PlainText, parse, to_json, verify
from ideogram_app.caption.rules import CODES, STRUCTURAL_CODES

BULK_EXAMPLES = 10_000
STRATEGY_EXAMPLES = 300

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOO_LONG = 10 ** 5000  # more digits than Python will print or read
SPECIAL_NUMBERS = [0, -1, 1001, 2.5, 1.0, math.nan, math.inf, -math.inf, -0.0, 1e308, 2 ** 63, TOO_LONG, -TOO_LONG]
HOSTILE = ["", " ", "obj", "text", "character", "#FFFFFF", "#fff", "\\u00e9", "\u00e9", "\ud800", "a\udfffb",
           "\U0001F600", "`", "``x``", "<img src=x onerror=alert(1)>", "</div>", "**x**", "[a](javascript:alert(1))",
           "\x00", "\n", "$$x$$", "\u202e"]
CHARS = list("ab #{}[]\":,\\`<>*_&'") + ["\ud800", "\udc00", "\U0001F600", "\u00e9", "\n", "\x00", "\u2028"]
ELEMENT_FIELDS = ["type", "bbox", "text", "desc", "color_palette", "aspect_ratio", "weight"]
STYLE_FIELDS = ["aesthetics", "lighting", "photo", "art_style", "medium", "color_palette", "colour_palette"]
COMPOSITION_FIELDS = ["background", "elements", "canvas"]
TOP_FIELDS = ["high_level_description", "style_description", "compositional_deconstruction", "aspect_ratio"]
KEYS = ELEMENT_FIELDS + STYLE_FIELDS + COMPOSITION_FIELDS + TOP_FIELDS


class Choices:
    """Decisions read one byte at a time from a hypothesis byte string (0 once it runs out), so
    hypothesis shrinks a value by shrinking its bytes toward zero: toward the first option of
    every choice, which is always the simplest."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def below(self, n: int) -> int:
        byte = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return byte % n

    def pick(self, options: list):
        return options[self.below(len(options))]

    def raw(self, size: int) -> bytes:
        return bytes(self.below(256) for _ in range(size))

    def number(self):
        kind = self.below(4)
        if kind == 0:
            return self.below(256) * 5 - 5  # -5 ... 1270: both sides of the 0-1000 grid
        if kind == 1:
            return self.pick(SPECIAL_NUMBERS)
        if kind == 2:
            return struct.unpack("<d", self.raw(8))[0]  # any double: NaN, infinities, subnormals
        return int.from_bytes(self.raw(9), "little", signed=True)

    def string(self) -> str:
        if self.below(2):
            return self.pick(HOSTILE + KEYS)
        return "".join(self.pick(CHARS) if self.below(2) else chr(self.below(256) * 4352 % 0x110000)
                       for _ in range(self.below(8)))

    def json(self, depth: int = 0):
        """Any JSON value: null, boolean, number, string, list or object (nesting up to 4)."""
        kind = self.below(6 if depth < 4 else 4)
        if kind == 0:
            return None
        if kind == 1:
            return bool(self.below(2))
        if kind == 2:
            return self.number()
        if kind == 3:
            return self.string()
        if kind == 4:
            return [self.json(depth + 1) for _ in range(self.below(6))]
        return {self.string(): self.json(depth + 1) for _ in range(self.below(6))}

    def fields(self, names: list[str], plausible) -> dict:
        """Some of `names` in any order; each value plausible for its field or any JSON value."""
        chosen = [name for name in names if self.below(4)]
        for index in range(len(chosen) - 1, 0, -1):
            swap = self.below(index + 1)
            chosen[index], chosen[swap] = chosen[swap], chosen[index]
        return {name: plausible(name) if self.below(4) else self.json(1) for name in chosen}

    def field(self, name: str):
        if name == "type":
            return self.pick(["obj", "text", "character"])
        if name == "bbox":
            return [self.number() if self.below(4) else self.json(3) for _ in range(self.pick([4, 4, 3, 5]))]
        if name == "color_palette":
            return [self.pick(["#1A2B3C", "#abcdef", "#FFF", "red"]) if self.below(3) else self.json(3)
                    for _ in range(self.below(8))]
        if name == "elements":
            return [self.fields(ELEMENT_FIELDS, self.field) for _ in range(self.below(5))]
        if name == "style_description":
            return self.fields(STYLE_FIELDS, self.field)
        if name == "compositional_deconstruction":
            return self.fields(COMPOSITION_FIELDS, self.field)
        return self.string()

    def caption(self) -> dict:
        return self.fields(TOP_FIELDS, self.field)


# hypothesis' own strategies: strings with everything JSON text can hold (lone surrogates, category
# Cs, are left out by default), every float and integer, and the hostile strings above.
strings = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(HOSTILE)
numbers = st.integers() | st.floats() | st.sampled_from([1, -1]).map(lambda sign: sign * TOO_LONG)
any_json = st.recursive(st.none() | st.booleans() | numbers | strings, lambda children: st.lists(children, max_size=5) |
                        st.dictionaries(strings | st.sampled_from(KEYS), children, max_size=5), max_leaves=25)


@st.composite
def shaped(draw, names: list[str], plausible: dict):
    chosen = draw(st.permutations(names).flatmap(lambda order: st.lists(st.sampled_from(order), unique=True)))
    return {name: draw(plausible.get(name, strings) | any_json) for name in chosen}


element_fields = {"type": st.sampled_from(["obj", "text", "character"]),
                  "bbox": st.lists(st.integers(-5, 1005) | any_json, min_size=3, max_size=5),
                  "color_palette": st.lists(st.sampled_from(["#1A2B3C", "#abcdef", "red"]) | any_json, max_size=7)}
captions = shaped(TOP_FIELDS, {
    "style_description": shaped(STYLE_FIELDS, element_fields),
    "compositional_deconstruction": shaped(COMPOSITION_FIELDS,
                                           {"elements": st.lists(shaped(ELEMENT_FIELDS, element_fields), max_size=4)}),
})


def _text_form(value, form: int) -> str | None:
    """The value written as JSON in one of the ways a user may paste it; None when JSON cannot
    write it (an integer too long to print)."""
    try:
        if form == 1:
            return json.dumps(value, indent=2)
        if form == 2:
            return json.dumps(value)  # non-ASCII (lone surrogates included) as \\uXXXX escapes
        compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return {0: compact, 3: "```json\n" + compact + "\n```", 4: json.dumps(compact)}[form]
    except ValueError:
        return None


def _refuse(constant):
    raise AssertionError(f"to_json wrote {constant}, which is not JSON")


def _check(value) -> None:
    """The contract for one input (a str or dict)."""
    issues = verify(value)
    for item in issues:
        assert item.code in CODES and item.severity == CODES[item.code]
        (item.path + item.message).encode("utf-8")  # printable: no lone surrogate leaks into a report
    codes = {item.code for item in issues}
    try:
        parsed = parse(value)
    except CaptionFormatError as err:
        assert err.issues and {i.code for i in err.issues} <= STRUCTURAL_CODES
        assert codes & STRUCTURAL_CODES
    except CaptionSyntaxError:
        assert "json_syntax" in codes
    else:
        assert isinstance(parsed, (Caption, PlainText))
        assert ("plain_text" in codes) == isinstance(parsed, PlainText)
        if isinstance(parsed, PlainText):  # prose is passed on as it is; verify flags a lone surrogate in it
            assert codes <= {"plain_text", "wrong_type"}
            assert ("wrong_type" in codes) == (parsed.text.encode("utf-8", "replace") != parsed.text.encode(
                "utf-8", "surrogatepass"))
        else:
            assert not codes & (STRUCTURAL_CODES | {"json_syntax"})
    try:
        text = to_json(value)
    except (CaptionFormatError, CaptionSyntaxError):
        assert codes & (STRUCTURAL_CODES | {"json_syntax"})
    except ValueError as err:
        assert "plain text" in str(err) and "plain_text" in codes
    else:
        json.loads(text.encode("utf-8"), parse_constant=_refuse)


def _check_value_and_text(value, form: int) -> None:
    if isinstance(value, (dict, str)):
        _check(value)
    else:  # other JSON values are a caption of the wrong type for verify, and the wrong argument type for the rest
        assert [i.code for i in verify(value)] == ["not_an_object"]
        for refuses in (parse, to_json):
            with pytest.raises(TypeError, match="takes a str, dict or Caption"):
                refuses(value)
    text = _text_form(value, form)
    if text is not None:
        _check(text)


@settings(FUZZ, max_examples=BULK_EXAMPLES)
@given(st.binary(min_size=300, max_size=300))
def test_random_json_never_breaks_the_core(data):
    choices = Choices(data)
    _check_value_and_text(choices.json(), choices.below(5))


@settings(FUZZ, max_examples=BULK_EXAMPLES)
@given(st.binary(min_size=600, max_size=600))
def test_caption_shaped_values_never_break_the_core(data):
    choices = Choices(data)
    _check_value_and_text(choices.caption(), choices.below(5))


@settings(FUZZ, max_examples=STRATEGY_EXAMPLES)
@given(any_json, st.integers(0, 4))
def test_values_from_hypothesis_strategies_never_break_the_core(value, form):
    _check_value_and_text(value, form)


@settings(FUZZ, max_examples=STRATEGY_EXAMPLES)
@given(captions, st.integers(0, 4))
def test_caption_shapes_from_hypothesis_strategies_never_break_the_core(value, form):
    _check_value_and_text(value, form)


def test_the_generators_reach_every_json_type_in_every_field():
    """The bulk generator really varies the fields: over a fixed sample, every top-level, style,
    scene and element field takes every JSON type (so the values above test what they claim)."""
    seen: dict[str, set[str]] = {}

    def note(prefix: str, obj) -> None:
        for key, value in (obj.items() if isinstance(obj, dict) else ()):
            kind = "number" if type(value) in (int, float) else type(value).__name__
            seen.setdefault(prefix + key, set()).add(kind)

    for seed in range(3000):
        caption = Choices(random.Random(seed).randbytes(600)).caption()
        note("", caption)
        note("style.", caption.get("style_description"))
        scene = caption.get("compositional_deconstruction")
        note("scene.", scene)
        elements = scene.get("elements") if isinstance(scene, dict) else None
        for element in elements if isinstance(elements, list) else ():
            note("element.", element)
    fields = (TOP_FIELDS + ["style." + f for f in STYLE_FIELDS] + ["scene." + f for f in COMPOSITION_FIELDS]
              + ["element." + f for f in ELEMENT_FIELDS])
    every_type = {"NoneType", "bool", "number", "str", "list", "dict"}
    assert {field: every_type - seen.get(field, set()) for field in fields} == {field: set() for field in fields}
