"""Region edit (pipeline/region.py): the mask against hand-written references, the step hook against the
img2img trajectory it must follow outside the box, the settings' rules, the CLI flag, and end to end on a
tiny repo: pixels outside the box (beyond the ramp) are the input's, pixels inside change."""
import json
import math

import pytest
import torch
from PIL import Image

from ideogram_app.generate import main
from ideogram_app.pipeline.metadata import read_image_metadata, save_png
from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
from ideogram_app.pipeline.region import FEATHER_TOKENS, keep_outside, paste_outside, pixel_mask, region_mask
from ideogram_app.pipeline.sampling import denoise
from ideogram_app.pipeline.settings import GenerationSettings, SettingsError

CAPTION = {
    "high_level_description": "A poster with a title",
    "compositional_deconstruction": {
        "background": "plain blue",
        "elements": [{"type": "text", "bbox": [375, 375, 625, 625], "text": "HELLO", "desc": "bold serif"}],
    },
}
EDITED = json.loads(json.dumps(CAPTION))
EDITED["compositional_deconstruction"]["elements"][0].update(text="GOODBYE", desc="thin red script")
BOX = [375, 375, 625, 625]  # at 256x256: pixels 96..160, tokens 6..10 of 16
SIZE = dict(width=256, height=256, preset="turbo", num_inference_steps=4)


def reference_mask(box, width, height, feather):
    """The mask with plain loops and the rounding written out: bbox -> pixels (round half up, the
    caption core's rule), token centres at 16*i + 8 px, distance outside in tokens, linear ramp."""
    y0, x0, y1, x1 = (math.floor(v * extent / 1000 + 0.5) for v, extent in zip(box, (height, width, height, width)))
    rows = []
    for i in range(height // 16):
        for j in range(width // 16):
            cy, cx = 16 * i + 8, 16 * j + 8
            dy = max(y0 - cy, cy - y1, 0) / 16
            dx = max(x0 - cx, cx - x1, 0) / 16
            d = max(dy, dx)
            rows.append((1.0 if d == 0 else 0.0) if feather == 0 else max(0.0, 1.0 - d / feather))
    return torch.tensor(rows)


def test_mask_of_a_centred_box_by_hand():
    # 128x128 is 8x8 tokens; [250, 250, 750, 750] is pixels 32..96 = tokens 2..6, so rows/columns 2..5 are
    # inside (centres 2.5..5.5); the centres of rows 1 and 6 lie 0.5 token outside (1 - 0.5/2 with a 2-token
    # ramp), those of rows 0 and 7 1.5 tokens outside (1 - 1.5/2).
    ramp = [0.25, 0.75, 1.0, 1.0, 1.0, 1.0, 0.75, 0.25]
    expected = torch.tensor([[min(a, b) for b in ramp] for a in ramp])
    assert torch.equal(region_mask([250, 250, 750, 750], 128, 128, feather=2).view(8, 8), expected)
    hard = (expected == 1.0).float()
    assert torch.equal(region_mask([250, 250, 750, 750], 128, 128, feather=0).view(8, 8), hard)


@pytest.mark.parametrize("box,width,height,feather", [
    ([0, 0, 1000, 1000], 64, 96, 2), ([123, 456, 789, 999], 256, 160, 2), ([0, 0, 10, 10], 320, 320, 3),
    ([500, 100, 520, 900], 192, 384, 1), ([333, 333, 334, 667], 160, 160, 0), ([90, 10, 610, 430], 1024, 768, 4),
])
def test_mask_matches_the_reference(box, width, height, feather):
    mask = region_mask(box, width, height, feather)
    assert mask.shape == ((height // 16) * (width // 16),) and mask.dtype == torch.float32
    assert torch.allclose(mask, reference_mask(box, width, height, feather), atol=1e-6)


def test_pixel_mask_is_zero_beyond_the_ramp_and_one_deep_inside():
    mask = region_mask(BOX, 256, 256)
    pixels = pixel_mask(mask, 256, 256)[0, 0]
    assert pixels.shape == (256, 256)
    # The first token with 0 has its centre FEATHER_TOKENS + 0.5 tokens outside the box edge (96 px).
    edge = 96 - 16 * FEATHER_TOKENS - 8
    assert pixels[:edge].abs().max() == 0 and pixels[:, :edge].abs().max() == 0
    assert pixels[256 - edge:].abs().max() == 0 and pixels[:, 256 - edge:].abs().max() == 0
    assert pixels[edge + 1, 128] > 0 and pixels[256 - edge - 1, 128] > 0
    assert torch.all(pixels[104:152, 104:152] == 1.0)
    # monotone ramp along a row through the middle
    row = pixels[128, :128]
    assert torch.all(row[1:] >= row[:-1])


def test_hook_keeps_the_input_trajectory_outside_and_ends_on_the_clean_latents():
    torch.manual_seed(0)
    n, channels = 12, 4
    clean, noise = torch.randn(1, n, channels), torch.randn(2, n, channels)
    mask = torch.tensor([0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.0, 0.0])
    times = [0.2, 0.4, 0.7, 0.9, 0.99945]
    seen = []

    def velocity(z, t, g):  # any velocity: outside the box the hook must undo it
        return torch.full_like(z, 3.0) * g

    def hook(step, t_next, z):
        out = keep_outside(mask, clean, noise, len(times) - 1)(step, t_next, z)
        seen.append((step, t_next, z.clone(), out.clone()))
        return out

    start = times[0] * clean + (1 - times[0]) * noise
    z = denoise(velocity, start, times, [1.0] * 4, after_step=hook)
    for step, t_next, before, after in seen:
        target = clean.expand(2, -1, -1) if step == len(times) - 1 else t_next * clean + (1 - t_next) * noise
        for k in range(n):
            expected = mask[k] * before[:, k] + (1 - mask[k]) * target[:, k]
            assert torch.allclose(after[:, k], expected, atol=1e-6), (step, k)
    outside = mask == 0
    assert torch.equal(z[:, outside], clean.expand(2, -1, -1)[:, outside])
    assert not torch.allclose(z[:, ~outside], clean.expand(2, -1, -1)[:, ~outside])


def test_paste_outside_blends_with_the_pixel_mask():
    decoded, original = torch.ones(2, 3, 64, 80), -torch.ones(1, 3, 64, 80)
    mask = region_mask([0, 0, 500, 500], 80, 64)
    m = pixel_mask(mask, 80, 64)
    assert torch.allclose(paste_outside(decoded, original, mask), m * 1 + (1 - m) * -1)


@pytest.mark.parametrize("values,message", [
    (dict(edit_region=[100, 100, 500, 500]),
     "edit_region [100, 100, 500, 500] needs an input_image: the image whose region is regenerated"),
    (dict(edit_region=[500, 100, 100, 500], input_image="in.png"),
     "edit_region [500, 100, 100, 500] has a minimum above its maximum; the order is [y_min, x_min, y_max, x_max]"),
    (dict(edit_region=[0, 0, 1001, 500], input_image="in.png"), "edit_region [0, 0, 1001, 500] leaves the 0-1000 grid"),
    (dict(edit_region=[0, 0, 0, 500], input_image="in.png"), "edit_region [0, 0, 0, 500] has zero area"),
    (dict(edit_region=[1, 2, 3], input_image="in.png"),
     "edit_region must be four integers [y_min, x_min, y_max, x_max]"),
    (dict(edit_region=[1, 2, 3, 4.5], input_image="in.png"), "edit_region must be four integers"),
    (dict(edit_region="0,0,10,10", input_image="in.png"), "edit_region must be a box [y_min, x_min, y_max, x_max]"),
])
def test_settings_refuse_bad_regions_naming_the_field(values, message):
    with pytest.raises(SettingsError) as err:
        GenerationSettings(**values)
    ((field, text),) = err.value.problems
    assert field == "edit_region" and text.startswith(message), text


def test_settings_accept_a_region_and_use_the_input_even_at_strength_one():
    settings = GenerationSettings(edit_region=[100.0, 0, 500, 1000], input_image="in.png", denoising_strength=1.0)
    assert settings.edit_region == (100, 0, 500, 1000) and settings.img2img and settings.warnings == ()
    plain = GenerationSettings(input_image="in.png", denoising_strength=1.0)
    assert not plain.img2img and plain.warnings  # without a region, strength 1 ignores the input (as before)


@pytest.fixture(scope="module")
def pipe(tiny_repo):
    return Ideogram4Pipeline.from_pretrained(str(tiny_repo), torch_dtype=torch.float32, memory="cpu")


@pytest.fixture(scope="module")
def source(pipe, tmp_path_factory):
    """A generated result, saved as the app saves it: the image being edited."""
    path = tmp_path_factory.mktemp("region") / "source.png"
    save_png(pipe(CAPTION, seed=1, **SIZE), path)
    return path


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3).float()


def test_region_edit_changes_only_the_box(pipe, source):
    original = as_tensor(Image.open(source).convert("RGB"))
    edited_image = pipe(EDITED, input_image=source, edit_region=BOX, denoising_strength=0.9, seed=2, **SIZE)
    whole = pipe(EDITED, input_image=source, denoising_strength=0.9, seed=2, **SIZE)  # plain img2img
    diff = (as_tensor(edited_image) - original).abs()
    whole_diff = (as_tensor(whole) - original).abs()
    # Outside: everything farther than the ramp plus one token from the box (pixels 96..160).
    margin = 16 * (FEATHER_TOKENS + 1)
    outside = torch.ones(256, 256, dtype=torch.bool)
    outside[96 - margin:160 + margin, 96 - margin:160 + margin] = False
    inside = torch.zeros(256, 256, dtype=torch.bool)
    inside[96:160, 96:160] = True
    print(f"region edit: outside max |diff| {diff[outside].max():.1f}, inside mean |diff| {diff[inside].mean():.1f}; "
          f"plain img2img outside mean |diff| {whole_diff[outside].mean():.1f}")
    assert diff[outside].max() <= 1.0  # the bound: at most one 8-bit level (observed: 0)
    assert diff[inside].mean() > 10.0
    assert whole_diff[outside].mean() > 10.0  # without the region, the same run changes the outside too
    settings = read_image_metadata(edited_image)["settings"]
    assert settings["edit_region"] == BOX and settings["img2img"] is True and settings["denoising_strength"] == 0.9


def test_latents_outside_the_ramp_are_the_inputs_exactly(pipe, source):
    from ideogram_app.pipeline.conditioning import encode_image
    from ideogram_app.pipeline.images import image_to_tensor, open_image

    clean = encode_image(pipe.vae, image_to_tensor(open_image(source)), pipe.memory)
    for strength in (0.5, 1.0):
        z = pipe(EDITED, input_image=source, edit_region=BOX, denoising_strength=strength, seed=3, num_images=2,
                 output_type="latent", **SIZE)
        mask = region_mask(BOX, 256, 256)
        assert torch.equal(z[:, mask == 0], clean.expand(2, -1, -1)[:, mask == 0])
        assert (z[:, mask == 1] - clean[:, mask == 1]).abs().mean() > 0.1


def test_cli_edit_region(tiny_repo, source, tmp_path, capsys):
    caption = tmp_path / "edited.json"
    caption.write_text(json.dumps(EDITED))
    common = ["--model", str(tiny_repo), "--caption", str(caption), "--size", "256x256", "--preset", "turbo",
              "--steps", "2", "--memory", "cpu", "--dtype", "float32", "--seed", "4"]
    out = tmp_path / "edited.png"
    assert main([*common, "--out", str(out), "--input-image", str(source), "--edit-region", "375,375,625,625",
                 "--strength", "0.8"]) == 0
    settings = read_image_metadata(out)["settings"]
    assert settings["edit_region"] == BOX and settings["denoising_strength"] == 0.8
    capsys.readouterr()
    assert main([*common, "--out", str(out), "--edit-region", "375,375,625,625"]) == 2
    assert "--edit-region: edit_region [375, 375, 625, 625] needs an input_image" in capsys.readouterr().err
    assert main([*common, "--out", str(out), "--input-image", str(source), "--edit-region", "1,2,x,4"]) == 2
    assert "--edit-region 1,2,x,4: give four whole numbers y_min,x_min,y_max,x_max" in capsys.readouterr().err
    assert main([*common, "--out", str(out), "--input-image", str(source), "--edit-region", "600,0,100,500"]) == 2
    assert "--edit-region: edit_region [600, 0, 100, 500] has a minimum above its maximum" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("memory", ["full", "offload"])
def test_region_edit_on_cuda_keeps_the_outside(tiny_repo, source, memory):
    """The hook's tensors and the paste-back follow the latents to the GPU (full) or back (offload)."""
    pipe = Ideogram4Pipeline.from_pretrained(str(tiny_repo), torch_dtype=torch.float32, device="cuda", memory=memory)
    edited = pipe(EDITED, input_image=source, edit_region=BOX, denoising_strength=0.9, seed=2, **SIZE)
    diff = (as_tensor(edited) - as_tensor(Image.open(source).convert("RGB"))).abs()
    margin = 16 * (FEATHER_TOKENS + 1)
    outside = torch.ones(256, 256, dtype=torch.bool)
    outside[96 - margin:160 + margin, 96 - margin:160 + margin] = False
    assert diff[outside].max() <= 1.0 and diff[96:160, 96:160].mean() > 10.0
