"""Files -> modules: every published Ideogram 4 checkpoint layout into the modules of `ideogram_app.model`.

Read top-down: `safetensors_io` (headers, files, tensors) -> `checkpoint_layout` (which keys mean
what) -> `config` (config.json -> config object) -> `streaming` (the one read-convert-place loop,
through `conversion`: fp8 kept or dequantised) -> the loaders `dit`, `text_encoder`, `vae`.
"""
