"""The packed sequence layout (docs/model-dit.md, "Packed sequence"): positions, roles, segments, left padding."""
import pytest
import torch

from ideogram_app.model.token_layout import IMAGE_POSITION_OFFSET, build_token_layout


def test_single_prompt_layout_matches_spec():
    pos, seg, ind = build_token_layout(3, grid_h=2, grid_w=3, batch=1)
    assert pos.shape == (1, 9, 3) and seg.shape == ind.shape == (1, 9)
    assert pos[0, :3].tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    o = IMAGE_POSITION_OFFSET
    # row-major image tokens, offset on all three axes (t included)
    assert pos[0, 3:].tolist() == [[o, o + r, o + c] for r in range(2) for c in range(3)]
    assert ind[0].tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2]
    assert seg[0].tolist() == [1] * 9
    assert pos.dtype == seg.dtype == ind.dtype == torch.int64


def test_left_padding_for_uneven_batch():
    pos, seg, ind = build_token_layout([2, 4], grid_h=1, grid_w=2, batch=2)
    assert ind.tolist() == [[0, 0, 3, 3, 2, 2], [3, 3, 3, 3, 2, 2]]
    assert seg.tolist() == [[-1, -1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert pos[0, :4].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]]
    assert pos[1, :4, 0].tolist() == [0, 1, 2, 3]
    assert torch.equal(pos[0, 4:], pos[1, 4:])


def test_image_only_sequence_for_the_unconditional_pass():
    pos, seg, ind = build_token_layout(0, grid_h=2, grid_w=2, batch=3)
    assert pos.shape == (3, 4, 3)
    assert (ind == 2).all() and (seg == 1).all() and (pos >= IMAGE_POSITION_OFFSET).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (([1, 2], 2, 2, 3), "num_text_tokens has 2 entries but batch is 3"),
        (([-1], 2, 2, 1), "need text counts >= 0"),
        ((1, 0, 2, 1), "positive grid"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        build_token_layout(*args)
