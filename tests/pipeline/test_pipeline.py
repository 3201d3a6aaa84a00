"""End to end on tiny synthetic repos (CPU), and one step against a hand-written reference."""
import json
import math
import threading
import warnings

import huggingface_hub
import pytest
import torch
from PIL import Image

from ideogram_app.limits import LimitError, Limits
from ideogram_app.model.latents import denormalize_latents, normalize_latents, patchify, unpatchify
from ideogram_app.model.prompt_tokenizer import PromptTooLongError
from ideogram_app.pipeline import pipeline as pipeline_module
from ideogram_app.pipeline.images import fit_image, open_image
from ideogram_app.pipeline.metadata import read_image_metadata, save_png
from ideogram_app.pipeline.model_config import ModelConfig
from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
from ideogram_app.pipeline.prompt import InvalidCaptionError
from ideogram_app.pipeline.sampling import GenerationCancelled
from ideogram_app.pipeline.settings import SettingsError

CAPTION = {
    "high_level_description": "A poster with a red title",
    "compositional_deconstruction": {
        "background": "plain blue",
        "elements": [{"type": "text", "bbox": [100, 120, 300, 880], "text": "HELLO", "desc": "bold serif"}],
    },
}
CANONICAL = json.dumps(CAPTION, separators=(",", ":"))
FAST = dict(width=80, height=64, preset="turbo")  # the smallest sizes the limits allow: 5x4 tokens


@pytest.fixture(scope="module")
def pipes(tiny_repos):
    return {
        layout: Ideogram4Pipeline.from_pretrained(str(repo), torch_dtype=torch.float32, memory="cpu")
        for layout, repo in tiny_repos.items()
    }


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()


def test_generation_in_every_layout_is_sized_seeded_and_deterministic(pipes):
    for layout, pipe in pipes.items():
        first = pipe(CAPTION, seed=11, **FAST)
        again = pipe(CAPTION, seed=11, **FAST)
        other = pipe(CAPTION, seed=12, **FAST)
        assert first.size == (80, 64), layout
        assert first.tobytes() == again.tobytes(), layout
        assert (pixels(first) - pixels(other)).abs().mean() > 1.0, layout


def test_images_carry_caption_and_settings_through_png(pipes, tmp_path):
    image = pipes["fp8"](CAPTION, seed=5, num_inference_steps=3, **FAST)
    path = save_png(image, tmp_path / "out.png")
    record = read_image_metadata(path)
    assert record["prompt"] == CANONICAL and record["prompt_kind"] == "caption"
    s = record["settings"]
    assert s["preset"] == "turbo" and s["steps"] == 3 and s["guidance"] == [7.0, 7.0, 3.0]
    assert (s["width"], s["height"], s["seed"], s["denoising_strength"]) == (80, 64, 5, 1.0)
    assert (s["mu"], s["std"]) == (0.5, 1.75) and s["model"].endswith("repo_fp80")


def test_batches_use_consecutive_seeds(pipes):
    pipe = pipes["bf16"]
    batch = pipe("a red fox", seed=20, num_images=2, num_inference_steps=2, **FAST)
    assert isinstance(batch, list) and len(batch) == 2
    assert [read_image_metadata(im)["settings"]["seed"] for im in batch] == [20, 21]
    single = pipe("a red fox", seed=21, num_inference_steps=2, **FAST)
    # Same seed, batch of 2 vs alone: equal up to GEMM-blocking rounding (at most one 8-bit level).
    assert (pixels(batch[1]) - pixels(single)).abs().max() <= 1
    assert (pixels(batch[0]) - pixels(batch[1])).abs().mean() > 1.0


def hand_written_positions(n_text: int, gh: int, gw: int) -> torch.Tensor:
    rows = [(k, k, k) for k in range(n_text)]
    rows += [(65536, 65536 + r, 65536 + c) for r in range(gh) for c in range(gw)]
    return torch.tensor([rows])


def test_one_denoising_step_equals_the_formula(pipes):
    """Reference: both DiTs called on hand-built inputs (full-width text features, no hoisting), the
    guidance mixing and Euler step in t of docs/pipeline.md, "Sampler", with t from its formula."""
    pipe = pipes["bf16"]
    g, seed, mu, std, width, height = 5.0, 4, 0.3, 1.2, 64, 96
    z_pipe = pipe(CAPTION, seed=seed, guidance_schedule=[g], mu=mu, std=std, width=width, height=height,
                  output_type="latent")
    image = pipe(CAPTION, seed=seed, guidance_schedule=[g], mu=mu, std=std, width=width, height=height)

    features = pipe.text_encoder.encode(CANONICAL).float()
    n_text, gh, gw = features.shape[1], height // 16, width // 16
    n_img = gh * gw
    t_start = 1 / (1 + math.exp(0.5 * 18))  # u = 1 -> t_min
    t_end = 1 / (1 + math.exp(-0.5 * 15))  # u = 0 -> t_max
    noise = torch.randn((1, n_img, 128), generator=torch.Generator("cpu").manual_seed(seed))
    with torch.no_grad():
        v_cond = pipe.transformer(
            torch.cat([torch.zeros(1, n_text, 128), noise], dim=1),
            torch.tensor([t_start]),
            torch.cat([features, torch.zeros(1, n_img, features.shape[2])], dim=1),
            hand_written_positions(n_text, gh, gw),
            torch.ones(1, n_text + n_img, dtype=torch.long),
            torch.tensor([[3] * n_text + [2] * n_img]),
        )[:, n_text:]
        v_uncond = pipe.unconditional_transformer(
            noise,
            torch.tensor([t_start]),
            torch.zeros(1, n_img, features.shape[2]),
            hand_written_positions(0, gh, gw),
            torch.ones(1, n_img, dtype=torch.long),
            torch.full((1, n_img), 2),
        )
        z_ref = noise + (g * v_cond + (1 - g) * v_uncond) * (t_end - t_start)
        decoded = pipe.vae.decode(unpatchify(denormalize_latents(z_ref), gh, gw))
    assert z_pipe.shape == (1, n_img, 128)
    assert torch.allclose(z_pipe, z_ref, atol=1e-5, rtol=1e-5)
    ref_pixels = ((decoded[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).flatten()
    assert (pixels(image) - ref_pixels).abs().max() <= 1


def count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["x"].shape), with_kwargs=True)
    return calls, handle


def test_text_is_exactly_the_prompt_tokens_and_encoded_once(pipes):
    pipe = pipes["bf16"]
    pipe._encoded = None
    encodes = []
    real_encode = pipe.text_encoder.encode
    pipe.text_encoder.encode = lambda text: encodes.append(text) or real_encode(text)
    cond, h1 = count_calls(pipe.transformer)
    uncond, h2 = count_calls(pipe.unconditional_transformer)
    try:
        n_tokens = pipe.tokenizer.count(CANONICAL)
        pipe(CAPTION, seed=1, num_images=2, guidance_schedule=[4.0, 1.0, 2.0], **{**FAST, "preset": "quality"})
        pipe(CAPTION, seed=9, guidance_schedule=[4.0], **FAST)
    finally:
        del pipe.text_encoder.encode
        h1.remove(), h2.remove()
    assert encodes == [CANONICAL]  # once for both calls with the same prompt
    assert cond[0] == (2, n_tokens + 20, 128)  # no padding: text tokens + 5x4 image tokens
    assert uncond[0] == (2, 20, 128)  # image tokens only
    assert len(cond) == 4 and len(uncond) == 3  # the g = 1 step skips the unconditional model


def test_img2img_strength_controls_distance_to_the_input(pipes, tmp_path):
    pipe = pipes["bf16"]
    ramp = torch.linspace(0, 255, 80).repeat(64, 1)
    source = Image.fromarray(torch.stack([ramp, ramp.flip(1), 255 - ramp], -1).to(torch.uint8).numpy(), "RGB")
    source.save(tmp_path / "in.png")
    with torch.no_grad():
        target = normalize_latents(patchify(pipe.vae.encode(
            torch.frombuffer(bytearray(source.tobytes()), dtype=torch.uint8).reshape(64, 80, 3)
            .permute(2, 0, 1)[None].float() / 127.5 - 1)))
    distances = {}
    for strength in (0.3, 0.9):
        z = pipe("a gradient", input_image=tmp_path / "in.png", denoising_strength=strength, seed=3,
                 num_inference_steps=4, output_type="latent", **FAST)
        distances[strength] = (z - target).pow(2).mean().sqrt().item()
    print(f"img2img latent RMS distance to the input: {distances}")
    assert distances[0.3] < distances[0.9]
    image = pipe("a gradient", input_image=source.resize((200, 100)), denoising_strength=0.5, seed=3,
                 num_inference_steps=2, **FAST)
    assert image.size == (80, 64) and read_image_metadata(image)["settings"]["img2img"] is True


def test_stop_event_cancels_between_steps(pipes):
    stop, seen = threading.Event(), []

    def callback(step, total):
        seen.append((step, total))
        if step == 2:
            stop.set()

    with pytest.raises(GenerationCancelled, match="stopped after 2 of 12 steps"):
        pipes["bf16"]("a cat", seed=1, callback=callback, stop_event=stop, **FAST)
    assert seen == [(1, 12), (2, 12)]


def test_missing_unconditional_transformer_warns_and_uses_the_conditional_one(tiny_repo_no_uncond):
    with pytest.warns(UserWarning, match="no unconditional_transformer"):
        pipe = Ideogram4Pipeline.from_pretrained(tiny_repo_no_uncond, torch_dtype=torch.float32, memory="cpu")
    calls, handle = count_calls(pipe.transformer)
    image = pipe("a cat", seed=1, num_inference_steps=2, **FAST)
    handle.remove()
    assert image.size == (80, 64)
    assert [c[1] for c in calls] == [calls[0][1], 20, calls[0][1], 20]  # cond then image-only, twice


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(width=1000), SettingsError, "width 1000 is not a multiple of 16; the nearest valid widths are 992 and 1008"),
        (dict(width=100000, height=100000), SettingsError, "width 100000 is outside the allowed 64-2048 pixels"),
        (dict(width=float("nan")), SettingsError, "width must be a whole number, got nan"),
        (dict(denoising_strength=0.0), SettingsError, r"denoising_strength must be in \(0, 1\]"),
        (dict(denoising_strength=1.5), SettingsError, r"denoising_strength must be in \(0, 1\]"),
        (dict(denoising_strength=0.5), SettingsError, "denoising_strength 0.5 needs an input_image"),
        (dict(input_image="/nonexistent.png", denoising_strength=0.5), ValueError, "input_image /nonexistent.png does not exist"),
        (dict(num_images=0), SettingsError, "num_images is 0; choose 1 to 8"),
        (dict(seed=-2), SettingsError, "seed -2 is outside 0..4294967295; use -1 for a random seed"),
        (dict(num_inference_steps=1000), SettingsError, "1000 denoising steps asked for; choose 1 to 200"),
        (dict(prompt="x" * 100_001), LimitError, "the caption is 100,001 characters long; at most 100,000"),
        (dict(sharpness=2), TypeError, "unknown generation setting"),
        (dict(preset="ultra"), SettingsError, "preset 'ultra' is unknown"),
        (dict(num_inference_steps=5, guidance_schedule=[7.0]), SettingsError, "has 1 entries but num_inference_steps is 5"),
        (dict(prompt={"compositional_deconstruction": {"elements": []}, "extra": 1}), InvalidCaptionError, "the caption has 2 error"),
        (dict(prompt='{"high_level_description": "x",'), ValueError, "invalid JSON at line 1"),
        (dict(prompt="word " * 3000), PromptTooLongError, "Ideogram 4 accepts at most 2048"),
        (dict(output_type="np"), ValueError, "output_type must be 'pil' or 'latent', got 'np'"),
        (dict(rand_device="gpu0"), ValueError, "rand_device 'gpu0' is not a torch device name"),
    ],
)
def test_bad_input_fails_before_any_model_work(pipes, kwargs, error, message):
    pipe = pipes["bf16"]
    pipe._encoded = None
    calls, handle = count_calls(pipe.transformer)
    try:
        with pytest.raises(error, match=message):
            pipe(**{"prompt": "a cat", "seed": 1, **FAST, **kwargs})
    finally:
        handle.remove()
    assert calls == [] and pipe._encoded is None


def test_negative_prompt_warns_once(pipes, monkeypatch):
    monkeypatch.setattr(pipeline_module, "_warned_negative_prompt", False)
    with pytest.warns(UserWarning, match="negative_prompt is ignored"):
        pipes["bf16"]("a cat", negative_prompt="blurry", seed=1, num_inference_steps=1, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipes["bf16"]("a cat", negative_prompt="blurry", seed=1, num_inference_steps=1, **FAST)


def test_diffsynth_style_configs_load_the_same_model_as_the_short_form(tiny_repos, pipes, monkeypatch):
    repo = tiny_repos["fp8"]
    fetched = []

    def snapshot_download(repo_id, **kwargs):
        fetched.append((repo_id, kwargs["allow_patterns"]))
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    repo_id = "ideogram-ai/ideogram-4-fp8"
    pipe = Ideogram4Pipeline.from_pretrained(
        torch_dtype=torch.float32,
        device="cpu",
        model_configs=[
            ModelConfig(model_id=repo_id, origin_file_pattern="transformer/diffusion_pytorch_model.safetensors"),
            ModelConfig(model_id=repo_id, origin_file_pattern="unconditional_transformer/diffusion_pytorch_model.safetensors"),
            ModelConfig(path=repo / "text_encoder" / "model.safetensors"),
            ModelConfig(path=repo / "vae"),
        ],
        tokenizer_config=ModelConfig(model_id=repo_id, origin_file_pattern="tokenizer/"),
        memory="cpu",
    )
    assert [patterns[0] for _, patterns in fetched] == [
        "transformer/diffusion_pytorch_model.safetensors",
        "unconditional_transformer/diffusion_pytorch_model.safetensors",
        "tokenizer/*",
    ]
    a = pipe("a cat", seed=2, num_inference_steps=2, **FAST)
    b = pipes["fp8"]("a cat", seed=2, num_inference_steps=2, **FAST)
    assert a.tobytes() == b.tobytes()


def test_bf16_repackage_borrows_the_fp8_tokenizer(tiny_repos, tmp_path, monkeypatch):
    repackage = tmp_path / "repackage"
    repackage.mkdir()
    for role in ("transformer", "unconditional_transformer", "text_encoder", "vae"):
        (repackage / role).symlink_to(tiny_repos["bf16"] / role)
    folders = {"DiffSynth-Studio/ideogram-4-bf16-repackage": repackage, "ideogram-ai/ideogram-4-fp8": tiny_repos["fp8"]}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(folders[repo_id]))
    with pytest.warns(UserWarning, match="ships no tokenizer; using the one of ideogram-ai/ideogram-4-fp8"):
        pipe = Ideogram4Pipeline.from_pretrained("DiffSynth-Studio/ideogram-4-bf16-repackage", memory="cpu")
    image = pipe("a cat", seed=2, num_inference_steps=2, **FAST)  # default bfloat16 compute on the CPU
    assert image.size == (80, 64)
    assert read_image_metadata(image)["settings"]["model"] == "DiffSynth-Studio/ideogram-4-bf16-repackage"


def test_input_images_are_scaled_to_cover_and_centre_cropped():
    source = Image.new("RGB", (200, 100), (255, 0, 0))
    source.paste((0, 0, 255), (100, 0, 200, 100))
    source.paste((0, 255, 0), (0, 0, 20, 100))  # a strip that the crop must cut away
    out = fit_image(source, 64, 64)
    assert out.size == (64, 64)
    assert out.getpixel((2, 32)) == (255, 0, 0) and out.getpixel((61, 32)) == (0, 0, 255)
    tall = fit_image(open_image(source.convert("L")), 32, 96)
    assert tall.size == (32, 96) and tall.mode == "RGB"


def test_input_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path):
    """A 4000x4000 PNG of one colour is a few kB on disk and 48 MB decoded: the limit is checked first,
    and the message names the limit, not the server path."""
    path = tmp_path / "secret-folder" / "bomb.png"
    path.parent.mkdir()
    Image.new("RGB", (4000, 4000)).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(LimitError, match="input_image is 4000x4000 \\(16 MP\\); images up to 10 MP") as err:
        open_image(path, Limits(max_image_pixels=10_000_000))
    assert "secret-folder" not in str(err.value)


def test_prepare_reports_unusual_choices(pipes):
    reordered = {"compositional_deconstruction": CAPTION["compositional_deconstruction"],
                 "high_level_description": CAPTION["high_level_description"]}
    request = pipes["bf16"].prepare(reordered, width=128, height=512, seed=1)
    assert request.warnings[0] == "width 128 is outside the recommended 256-2048 pixels; expect weaker images"
    assert any("key_order" in w for w in request.warnings)
    assert request.prompt.text == CANONICAL
