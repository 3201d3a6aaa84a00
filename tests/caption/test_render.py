"""render_layout: requested size at every supported shape, boxes exactly where bbox_to_pixels
puts them (sampled pixel colours), y-first placement, overlay keeps the image, labels drawn."""
import pytest
from PIL import Image

from ideogram_app.caption import Caption, Element, bbox_to_pixels, load_template, render_layout
from ideogram_app.caption.render import CANVAS, TYPE_COLORS, font_size_for


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
    with pytest.raises(ValueError, match="positive"):
        render_layout(_one(), 0, 100)


def test_outlines_thicken_with_the_image_so_large_previews_stay_readable():
    small, large = render_layout(_one(), 512, 512), render_layout(_one(), 2048, 2048)
    x0, y0, _, y1 = bbox_to_pixels([200, 300, 600, 700], 2048, 2048)
    assert large.getpixel((x0 + 5, y1 - 40)) == TYPE_COLORS["obj"]
    x0, y0, _, y1 = bbox_to_pixels([200, 300, 600, 700], 512, 512)
    assert small.getpixel((x0 + 5, y1 - 10)) != TYPE_COLORS["obj"]
