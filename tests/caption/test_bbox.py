"""The one pixel <-> 0-1000 conversion: y comes first, inverted drags and overshoots are fixed,
round trips stay within one grid step at any size and aspect ratio; NaN, infinities and wrong
shapes are refused with the value."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ideogram_app.caption import bbox_to_pixels, pixels_to_bbox

sizes = st.integers(16, 8192)
coords = st.floats(-5000, 15000, allow_nan=False, allow_infinity=False)


def test_y_comes_first_and_units_are_per_mille_of_each_axis():
    # 2000x500 image; a rectangle from x=500..1000, y=100..250 -> y 200..500, x 250..500.
    assert pixels_to_bbox((500, 100, 1000, 250), 2000, 500) == [200, 250, 500, 500]
    assert bbox_to_pixels([200, 250, 500, 500], 2000, 500) == (500, 100, 1000, 250)


def test_full_frame_and_spec_example():
    assert pixels_to_bbox((0, 0, 1024, 768), 1024, 768) == [0, 0, 1000, 1000]
    assert bbox_to_pixels([0, 0, 1000, 1000], 1024, 768) == (0, 0, 1024, 768)
    # The DiffSynth watermark "in the bottom left corner": low y rows, left x columns.
    x0, y0, x1, y1 = bbox_to_pixels([968, 8, 997, 332], 1000, 1000)
    assert (x0, y0, x1, y1) == (8, 968, 332, 997)


def test_inverted_drag_and_clamping():
    assert pixels_to_bbox((300, 200, 100, 50), 400, 400) == pixels_to_bbox((100, 50, 300, 200), 400, 400)
    assert pixels_to_bbox((-50, -10, 900, 700), 800, 600) == [0, 0, 1000, 1000]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="four integers"):
        bbox_to_pixels([0.5, 0, 10, 10], 100, 100)
    with pytest.raises(ValueError, match="four integers"):
        bbox_to_pixels([0, 0, 10], 100, 100)
    with pytest.raises(ValueError, match="positive"):
        pixels_to_bbox((0, 0, 1, 1), 0, 100)


@pytest.mark.parametrize("rect", [(math.nan, 0, 1, 1), (0, 0, math.inf, 1), (0, 0, 1), (0, 0, 1, "2"), (0, 0, 1, True)])
def test_rectangles_a_client_may_send_are_refused_with_the_value(rect):
    with pytest.raises(ValueError, match=r"rect must be four finite pixel coordinates .* got \["):
        pixels_to_bbox(rect, 100, 100)


@pytest.mark.parametrize("width, height", [(math.nan, 100), (100, math.inf), (-1, 100)])
def test_sizes_that_are_not_finite_and_positive_are_refused(width, height):
    for convert, value in ((pixels_to_bbox, (0, 0, 1, 1)), (bbox_to_pixels, [0, 0, 1, 1])):
        with pytest.raises(ValueError, match="image size must be positive"):
            convert(value, width, height)


@settings(max_examples=60)
@given(st.tuples(coords, coords, coords, coords), sizes, sizes)
def test_any_rectangle_gives_an_ordered_in_range_integer_box(rect, width, height):
    box = pixels_to_bbox(rect, width, height)
    assert all(type(v) is int and 0 <= v <= 1000 for v in box)
    assert box[0] <= box[2] and box[1] <= box[3]


@settings(max_examples=60)
@given(st.data(), sizes, sizes)
def test_pixel_round_trip_within_one_grid_step(data, width, height):
    x0, x1 = data.draw(st.floats(0, width)), data.draw(st.floats(0, width))
    y0, y1 = data.draw(st.floats(0, height)), data.draw(st.floats(0, height))
    back = bbox_to_pixels(pixels_to_bbox((x0, y0, x1, y1), width, height), width, height)
    step_x, step_y = max(1.0, width / 1000), max(1.0, height / 1000)
    expected = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    for got, want, step in zip(back, expected, (step_x, step_y, step_x, step_y)):
        assert abs(got - want) <= step


@settings(max_examples=60)
@given(st.lists(st.integers(0, 1000), min_size=4, max_size=4), sizes, sizes)
def test_bbox_round_trip_within_one_grid_step(values, width, height):
    box = [min(values[0], values[2]), min(values[1], values[3]), max(values[0], values[2]), max(values[1], values[3])]
    back = pixels_to_bbox(bbox_to_pixels(box, width, height), width, height)
    steps = (max(1.0, 1000 / height), max(1.0, 1000 / width)) * 2
    assert all(abs(a - b) <= s for a, b, s in zip(back, box, steps))


@settings(max_examples=30)
@given(st.integers(0, 1000), st.integers(0, 1000), sizes, sizes, sizes)
def test_each_axis_depends_only_on_its_own_size(y, x, width, height, other):
    """Changing the width never moves y, and vice versa (no x/y mix-up)."""
    a = bbox_to_pixels([y, x, y, x], width, height)
    b = bbox_to_pixels([y, x, y, x], other, height)
    c = bbox_to_pixels([y, x, y, x], width, other)
    assert a[1] == b[1] and a[0] == c[0]
