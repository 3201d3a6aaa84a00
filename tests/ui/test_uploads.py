"""Uploads under the limits: an image's pixels are read from its header and refused before anything
decodes it, Pillow's own bound follows the limits, and every message names the file as the user called
it and the limit, never the server's path."""
import gradio as gr
import pytest
from gradio.data_classes import ImageData
from PIL import Image

from ideogram_app.limits import LimitError, Limits
from ideogram_app.ui.markup import escape
from ideogram_app.ui.uploads import CheckedImage, check_image_file, limit_pillow, read_text_upload

ONE_MP = Limits(max_image_pixels=1_000_000, max_upload_bytes=50_000)


@pytest.fixture
def pillow_bound(monkeypatch):
    """Pillow's process-wide bound, restored after the test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    limit_pillow(ONE_MP)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000


def png(path, width, height, mode="1"):
    Image.new(mode, (width, height)).save(path)  # 1 bit per pixel: a small file for many pixels
    return path


def test_pixels_are_checked_from_the_header(tmp_path, pillow_bound):
    check_image_file(png(tmp_path / "ok.png", 1000, 1000), "Input image", ONE_MP)
    with pytest.raises(LimitError) as err:
        check_image_file(png(tmp_path / "wide.png", 1200, 1000), "Input image", ONE_MP)
    assert str(err.value) == "Input image (wide.png) is 1200x1000 (1 MP); images up to 1 MP are accepted"
    with pytest.raises(LimitError) as err:  # beyond Pillow's bound: refused by Image.open itself
        check_image_file(png(tmp_path / "bomb.png", 1500, 1500), "Input image", ONE_MP)
    assert str(err.value) == "Input image (bomb.png) has more than 2 MP; images up to 1 MP are accepted"
    assert str(tmp_path) not in str(err.value)


def test_bytes_and_broken_files_are_named_not_located(tmp_path, pillow_bound):
    noisy = tmp_path / "noisy.png"
    Image.effect_noise((300, 300), 100).convert("RGB").save(noisy)
    with pytest.raises(LimitError, match=r"Reference image \(noisy.png\) is 0.\d MiB; uploads are limited to 0 MiB"):
        check_image_file(noisy, "Reference image", ONE_MP)
    (tmp_path / "notes.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError) as err:
        check_image_file(tmp_path / "notes.png", "Reference image", ONE_MP)
    assert str(err.value) == "Reference image: notes.png is not an image this app can read (PNG, JPEG or WebP)"
    with pytest.raises(ValueError, match="the upload gone.png is gone from the server; upload it again"):
        check_image_file(tmp_path / "gone.png", "Reference image", ONE_MP)
    (tmp_path / "c.json").write_text("x" * 60_000, encoding="utf-8")
    with pytest.raises(LimitError, match=r"c.json is 0.1 MiB; uploads are limited to 0 MiB"):
        read_text_upload(tmp_path / "c.json", ONE_MP)


def test_the_image_component_refuses_before_gradio_decodes(tmp_path, pillow_bound):
    with gr.Blocks():
        component = CheckedImage(label="Reference image", type="filepath", image_mode=None, limits=ONE_MP)
    assert component.get_config()["label"] == "Reference image" and component.get_block_name() == "image"
    ok = png(tmp_path / "ok.png", 100, 80, "RGB")
    assert component.preprocess(ImageData(path=str(ok), orig_name="ok.png")) == str(ok)  # not re-encoded
    wide = png(tmp_path / "<img src=x onerror=alert(1)>.png", 1200, 1000)
    with pytest.raises(gr.Error) as err:
        component.preprocess(ImageData(path=str(wide), orig_name=wide.name))
    assert err.value.message == escape("Reference image (<img src=x onerror=alert(1)>.png) is 1200x1000 (1 MP); "
                                       "images up to 1 MP are accepted")
    assert component.preprocess(None) is None
