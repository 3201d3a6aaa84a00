import pytest

from ideogram_app.pipeline.sizes import ASPECT_PRESETS, SizeError, check_size, parse_size, size_for_aspect, token_grid


def test_valid_sizes_pass_without_warnings():
    assert check_size(1024, 1024) == []
    assert check_size(256, 1536) == []  # exactly 6:1 is allowed


@pytest.mark.parametrize(
    "width,height,message",
    [
        (1000, 1024, "width 1000 is not a multiple of 16; the nearest valid widths are 992 and 1008"),
        (1024, 770, "height 770 is not a multiple of 16; the nearest valid heights are 768 and 784"),
    ],
)
def test_impossible_sizes_name_the_fix(width, height, message):
    with pytest.raises(SizeError, match=message):
        check_size(width, height)


def test_both_bad_sides_are_reported_together():
    with pytest.raises(SizeError) as err:
        check_size(1001, 999)
    assert "992 and 1008" in str(err.value) and "992 and 1008" in str(err.value).split(";")[1]


def test_unusual_sizes_warn():
    assert check_size(128, 128) == [
        "width 128 is outside the recommended 256-2048 pixels; expect weaker images",
        "height 128 is outside the recommended 256-2048 pixels; expect weaker images",
    ]
    assert check_size(2048, 320) == ["aspect ratio 6.40:1 is beyond the recommended 6:1"]


def test_parse_size():
    assert parse_size("1360x768") == (1360, 768)
    assert parse_size("64×32") == (64, 32)
    with pytest.raises(SizeError, match="'1024' is not of the form WIDTHxHEIGHT"):
        parse_size("1024")


def test_aspect_presets_are_valid_and_close_to_their_ratio():
    assert ASPECT_PRESETS["1:1 · 1 MP"] == (1024, 1024)
    for label, (w, h) in ASPECT_PRESETS.items():
        assert check_size(w, h) == []
        aw, ah = (int(x) for x in label.split(" ")[0].split(":"))
        assert abs(w / h - aw / ah) / (aw / ah) < 0.03, label
    assert size_for_aspect(16, 9, 1.0) == (1360, 768)


def test_token_grid_is_one_token_per_16_pixels():
    assert token_grid(1024, 768) == (48, 64)
    assert token_grid(80, 64) == (4, 5)
