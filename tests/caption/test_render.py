"""render_layout: requested size at every supported shape, boxes exactly where bbox_to_pixels
puts them (sampled pixel colours), y-first placement, overlay keeps the image, labels drawn; labels
and the background note fitted exactly like a brute-force reference, in time bounded by the box."""
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ideogram_app.caption import Caption, Element, bbox_to_pixels, load_template, render, render_layout
from ideogram_app.caption.render import CANVAS, TYPE_COLORS, font_size_for, load_font


def _one(element_type="obj", bbox=(200, 300, 600, 700), text=None):
    return Caption(background="Plain.", elements=[Element(type=element_type, bbox=list(bbox), desc="A box.", text=text)])


@pytest.mark.parametrize("size", [(256, 256), (1024, 1024), (2048, 2048), (2048, 336), (336, 2048), (1536, 640)])
def test_output_has_the_requested_size(size):
    image = render_layout(load_template("formula1_diffsynth"), *size)
    assert image.size == size and image.mode == "RGB"


@pytest.mark.parametrize("element_type", ["obj", "text"])
def test_box_lands_where_the_bbox_says(element_type):
    width, height = 800, 400
    image = render_layout(_one(element_type, text="HI" if element_type == "text" else None), width, height)
    x0, y0, x1, y1 = bbox_to_pixels([200, 300, 600, 700], width, height)
    assert (x0, y0, x1, y1) == (240, 80, 560, 240)
    color = TYPE_COLORS[element_type]
    mid_y = (y0 + y1) // 2 + 20
    assert image.getpixel((x0, mid_y)) == color  # left edge
    assert image.getpixel((x1 - 1, mid_y)) == color  # right edge (exclusive end)
    assert image.getpixel(((x0 + x1) // 2, y1 - 1)) == color  # bottom edge
    assert image.getpixel((x0 - 3, mid_y)) != color and image.getpixel((x1 + 2, mid_y)) != color
    inside = image.getpixel((x1 - 30, y1 - 15))
    assert inside != CANVAS and inside != color
    # the fill is tinted toward the type colour: its dominant channel rises relative to the canvas
    channel = max(range(3), key=lambda c: color[c])
    assert inside[channel] - min(inside) > CANVAS[channel] - min(CANVAS)
    assert image.getpixel((700, 30)) == CANVAS  # outside any box, off the grid lines


def test_y_is_the_first_bbox_value():
    image = render_layout(_one(bbox=(0, 0, 100, 1000)), 600, 600)  # a strip along the top
    assert image.getpixel((290, 55)) != CANVAS
    assert image.getpixel((290, 310)) == CANVAS


def test_overlay_keeps_the_image_outside_boxes_and_resizes_it():
    photo = Image.new("RGB", (300, 150), (0, 160, 0))
    image = render_layout(_one(), 800, 400, image=photo)
    assert image.size == (800, 400)
    assert image.getpixel((700, 30)) == (0, 160, 0)
    inside = image.getpixel((530, 225))
    assert inside != (0, 160, 0) and inside[2] > 0  # tinted blue for obj


def test_labels_are_drawn_in_white_and_scale_with_the_image():
    assert font_size_for(2048, 336) >= 11 and font_size_for(2048, 2048) > font_size_for(512, 512)
    for width, height in [(2048, 336), (512, 512)]:
        image = render_layout(_one(bbox=(100, 100, 900, 900)), width, height)
        x0, y0, _, _ = bbox_to_pixels([100, 100, 900, 900], width, height)
        size = font_size_for(width, height)
        label = image.crop((x0, y0, x0 + 4 * size, y0 + size + size // 2))
        assert (255, 255, 255) in {label.getpixel((x, y)) for x in range(label.width) for y in range(label.height)}


def test_elements_without_bbox_are_listed_in_a_top_band():
    caption = Caption(background="Sky.", elements=[Element(type="text", desc="Title.", text="HELLO")])
    image = render_layout(caption, 512, 512)
    assert image.getpixel((500, 2)) == (40, 40, 40)
    assert render_layout(_one(), 512, 512).getpixel((500, 2)) == CANVAS


def test_bad_size_is_refused():
    for width, height in [(0, 100), (100, -1), (float("nan"), 100), (100, 2.5), (True, 100)]:
        with pytest.raises(ValueError, match="positive whole numbers"):
            render_layout(_one(), width, height)


def test_outlines_thicken_with_the_image_so_large_previews_stay_readable():
    small, large = render_layout(_one(), 512, 512), render_layout(_one(), 2048, 2048)
    x0, y0, _, y1 = bbox_to_pixels([200, 300, 600, 700], 2048, 2048)
    assert large.getpixel((x0 + 5, y1 - 40)) == TYPE_COLORS["obj"]
    x0, y0, _, y1 = bbox_to_pixels([200, 300, 600, 700], 512, 512)
    assert small.getpixel((x0 + 5, y1 - 10)) != TYPE_COLORS["obj"]


# ---- cost linear in the text: labels fitted by binary search on a width-bounded prefix ----------

def _fits_reference(text, font, max_width):
    """Brute force: the whole text if it fits, else the longest prefix that fits with an ellipsis."""
    if font.getlength(text) <= max_width:
        return text
    for length in range(len(text), 0, -1):
        if font.getlength(text[:length] + "\u2026") <= max_width:
            return text[:length] + "\u2026"
    return ""


def _wrap_reference(text, font, max_width, max_lines):
    """Greedy word wrap, one word at a time, with the brute-force fit."""
    words, lines = text.split(), []
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and font.getlength(line + " " + words[0]) <= max_width:
            line += " " + words.pop(0)
        lines.append(line)
    if words and lines:
        lines[-1] = _fits_reference(lines[-1] + " " + " ".join(words), font, max_width)
    return [_fits_reference(line, font, max_width) for line in lines]


# Kerning pairs (AV, To, Yo), ligatures (fi, ffi), quotes, thin and wide glyphs, spaces.
label_text = st.lists(st.sampled_from(list("AVWTo.,il y\u00e9f\u201c\u201d-/ ") + ["ffi", "LT", "Yo", "fi"]),
                      max_size=40).map("".join)


@settings(max_examples=150, deadline=None)
@given(label_text, st.integers(0, 300), st.sampled_from([11, 23, 48]))
def test_fitted_label_is_the_longest_prefix_that_fits(text, max_width, size):
    font = load_font(size)
    assert render._fit(text, font, max_width) == _fits_reference(text, font, max_width)


@settings(max_examples=60, deadline=None)
@given(label_text, st.integers(20, 400), st.integers(1, 4))
def test_background_note_wraps_like_the_greedy_reference(text, max_width, max_lines):
    font = load_font(16)
    assert render._wrap(text, font, max_width, max_lines) == _wrap_reference(text, font, max_width, max_lines)


def _render_seconds(caption, width=1024, height=1024):
    start = time.perf_counter()
    render_layout(caption, width, height)
    return time.perf_counter() - start


def test_a_20000_character_desc_renders_in_well_under_a_second():
    caption = Caption(background="Plain.", elements=[Element(type="obj", bbox=[100, 100, 900, 900],
                                                             desc="A long description. " * 1000)])
    assert len(caption.elements[0].desc) == 20_000
    assert _render_seconds(caption) < 1.0


def test_megabyte_labels_and_background_notes_are_cut_before_measuring():
    huge = "x" * 5_000_000
    caption = Caption(background="word " * 1_000_000 + huge, elements=[
        Element(type="obj", bbox=[100, 100, 900, 900], desc=huge),
        Element(type="text", bbox=[0, 0, 50, 1000], desc="d", text=huge),
        Element(type="obj", desc=" " * 5_000_000 + huge),  # no bbox: listed in the top band
    ])
    assert _render_seconds(caption, 2048, 2048) < 2.0


def test_a_long_label_still_ends_in_an_ellipsis_inside_its_box():
    font = load_font(font_size_for(1024, 1024))
    label = render._fit("7 " + "x" * 5_000_000, font, 300)
    assert label.endswith("\u2026") and font.getlength(label) <= 300 < font.getlength(label + "x")
