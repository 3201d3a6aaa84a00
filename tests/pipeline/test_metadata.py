import json
import zlib

import pytest
from PIL import Image

from ideogram_app.pipeline.metadata import (
    NoImageMetadataError,
    attach_metadata,
    make_record,
    read_image_metadata,
    save_png,
)

CAPTION = '{"high_level_description":"Café «Ünïcode» poster","compositional_deconstruction":{"background":"x","elements":[]}}'


def png_chunks(path):
    """Walk the PNG chunk list by hand (independent of Pillow's reader)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def test_metadata_round_trips_through_a_png_file(tmp_path):
    settings = {"model": "ideogram-ai/ideogram-4-fp8", "preset": "quality", "steps": 48, "seed": 7,
                "width": 64, "height": 32, "denoising_strength": 1.0, "guidance": [7.0, 3.0]}
    image = attach_metadata(Image.new("RGB", (64, 32), "red"), make_record(CAPTION, "caption", settings))
    path = save_png(image, tmp_path / "out.png")
    record = read_image_metadata(path)
    assert record == {"format": 1, "prompt": CAPTION, "prompt_kind": "caption", "settings": settings}
    assert read_image_metadata(Image.open(path)) == record
    itxt = [body for kind, body in png_chunks(path) if kind == b"iTXt"]
    assert len(itxt) == 1 and itxt[0].startswith(b"ideogram4\x00")
    keyword, rest = itxt[0].split(b"\x00", 1)
    compressed, text = rest[0], rest[4:]  # flag, method, empty language tag and translated keyword
    text = zlib.decompress(text) if compressed else text
    assert json.loads(text.decode("utf-8"))["prompt"] == CAPTION


def test_images_without_metadata_have_precise_errors(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(NoImageMetadataError, match="plain.png has no Ideogram Layout Studio metadata"):
        read_image_metadata(plain)
    with pytest.raises(NoImageMetadataError, match="missing.png does not exist"):
        read_image_metadata(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not a png")
    with pytest.raises(NoImageMetadataError, match="notes.png is not an image"):
        read_image_metadata(text)
    broken = Image.new("RGB", (8, 8))
    broken.info["ideogram4"] = "{oops"
    with pytest.raises(NoImageMetadataError, match="damaged"):
        read_image_metadata(broken)


def test_a_write_killed_midway_leaves_no_broken_png(tmp_path):
    """A writer that saves large PNGs in a loop is killed with SIGKILL mid-write: every *.png it left
    opens and decodes completely (the partial bytes sit in a hidden .tmp file, never under the name)."""
    import signal
    import subprocess
    import sys
    import time

    writer = (
        "import sys, numpy as np; from PIL import Image; from ideogram_app.pipeline.metadata import save_png\n"
        "noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8))\n"
        "i = 0\n"
        "while True:\n"
        "    save_png(noise, f'{sys.argv[1]}/ideogram-{i}.png'); i += 1\n"
        "    print(i, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete file exists, the next is being written
        time.sleep(0.15)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs, "the writer saved nothing"
    for path in pngs:
        with Image.open(path) as image:
            image.load()
            assert image.size == (1500, 1500)
