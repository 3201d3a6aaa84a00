"""Live previews (pipeline/preview.py): the latent -> RGB projection fitted from a VAE, and the
previews a run hands out through `preview=`.

Two VAEs: the tiny FLUX.2 VAE (random weights: its last GroupNorm keeps little of a flat colour, so
only a loose bound holds there), and a VAE whose encoder is linear by construction (each 8 x 8 block
-> its mean colour plus fixed random features), for which the patch colours are an exact affine
function of the tokens: there the fit must recover any image's patch colours, which checks the
centring, the bias, the latent normalisation and the token order against hand-written averages."""
import torch
import pytest
from torch import nn

from ideogram_app.loading.vae import load_vae
from ideogram_app.pipeline import Ideogram4Pipeline
from ideogram_app.pipeline.conditioning import encode_image
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.preview import fit_projection, projection_for, tokens_to_image

CPU = MemoryPlan.create("cpu")


class LinearBlockVAE(nn.Module):
    """`encode`: (B, 3, H, W) -> (B, 32, H/8, W/8), channels 0-2 the mean colour of each 8 x 8 block,
    channels 3-31 fixed random linear features of the block (so the fit has distractors to ignore)."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 8, stride=8, bias=True)
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.05)
            self.conv.bias.copy_(torch.randn(32, generator=generator) * 0.1)
            self.conv.weight[:3] = 0.0
            for c in range(3):
                self.conv.weight[c, c] = 1.0 / 64
            self.conv.bias[:3] = 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float())


def block_means(image: torch.Tensor) -> torch.Tensor:
    """Hand-written: the mean colour of each 16 x 16 patch, row-major, as (N, 3)."""
    _, h, w = image.shape
    rows = []
    for y in range(0, h, 16):
        for x in range(0, w, 16):
            rows.append(image[:, y:y + 16, x:x + 16].reshape(3, -1).mean(1))
    return torch.stack(rows)


def test_the_fit_recovers_patch_colours_exactly_for_a_linear_encoder():
    vae = LinearBlockVAE()
    projection = fit_projection(vae, CPU)
    # a smooth image that is not among the fitting images: random colours on a 2 x 3 grid, ramped
    # linearly between (the fitting images are smooth too: on them the random features are functions
    # of colour and slope, so a noise image would be a question the fit was never asked)
    corners = torch.rand(1, 3, 2, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    image = torch.nn.functional.interpolate(corners, size=(96, 128), mode="bilinear", align_corners=True)[0]
    tokens = encode_image(vae, image[None], CPU)
    error = (projection(tokens)[0] - block_means(image)).abs().max()
    assert error < 1e-3, error


@pytest.fixture(scope="module")
def tiny_vae(tiny_vae_folder):
    return load_vae(tiny_vae_folder, device="cpu", dtype=torch.bfloat16)


# The tiny VAE's random encoder ends in a GroupNorm that normalises most of a flat colour away, so its
# tokens carry colour only weakly and a linear read-out is rough. Measured (seeds 0 and 3) on the
# 13 flat fitting colours at 64 x 64: the mean absolute channel error of the recovered colour is at
# most 0.47 per colour and 0.31 on average, where predicting the average colour is off by 0.75 on
# average. Bounds: 0.5 per colour, 0.4 on average, so the fit reads out real colour even there.
FLAT_COLOURS = [(r, g, b) for r in (-1.0, 1.0) for g in (-1.0, 1.0) for b in (-1.0, 1.0)] + [
    (v, v, v) for v in (-0.6, -0.3, 0.0, 0.3, 0.6)]
PER_COLOUR_BOUND, AVERAGE_BOUND = 0.5, 0.4


def test_flat_colours_encoded_by_the_tiny_vae_come_back_approximately(tiny_vae):
    projection = projection_for(tiny_vae, CPU)
    errors, guesses = [], []
    for colour in FLAT_COLOURS:
        image = torch.tensor(colour).view(1, 3, 1, 1).expand(1, 3, 64, 64)
        recovered = projection(encode_image(tiny_vae, image, CPU))[0].mean(0)
        errors.append((recovered - torch.tensor(colour)).abs().mean().item())
        guesses.append(sum(abs(c) for c in colour) / 3)  # the error of always answering grey (0, 0, 0)
    assert max(errors) <= PER_COLOUR_BOUND, errors
    assert sum(errors) / len(errors) <= AVERAGE_BOUND < sum(guesses) / len(guesses)


def test_the_projection_is_fitted_once_per_vae(tiny_vae):
    assert projection_for(tiny_vae, CPU) is projection_for(tiny_vae, CPU)
    assert projection_for(LinearBlockVAE(), CPU) is not projection_for(tiny_vae, CPU)


def test_preview_images_lay_the_batch_side_by_side():
    projection = fit_projection(LinearBlockVAE(), CPU)
    tokens = torch.zeros(2, 3 * 4, 128)
    image = tokens_to_image(projection, tokens, 3, 4, long_side=40)
    assert image.size == (2 * 4 * 10, 3 * 10) and image.mode == "RGB"


def test_a_run_hands_out_previews_every_k_steps_and_the_last(tiny_repo):
    pipe = Ideogram4Pipeline.from_pretrained(str(tiny_repo), device="cpu", memory="cpu", torch_dtype=torch.float32)
    seen = []
    image = pipe("a red apple", width=96, height=64, preset="turbo", num_inference_steps=5, seed=3,
                 preview=lambda step, total, picture: seen.append((step, total, picture.size)), preview_every=2)
    assert [(step, total) for step, total, _ in seen] == [(2, 5), (4, 5), (5, 5)]
    assert seen[0][2][0] / seen[0][2][1] == pytest.approx(96 / 64)
    plain = pipe("a red apple", width=96, height=64, preset="turbo", num_inference_steps=5, seed=3)
    assert image.tobytes() == plain.tobytes()  # looking does not change the image
    with pytest.raises(ValueError, match="preview_every must be a positive whole number"):
        pipe("a red apple", width=96, height=64, num_inference_steps=2, preview=lambda *a: None, preview_every=0)
