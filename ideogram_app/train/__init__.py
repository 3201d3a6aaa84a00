"""LoRA and full fine-tuning of the Ideogram 4 DiT with DiffSynth-compatible flags (docs/training.md).

`config.SETTINGS` is the one list of settings (CLI and Train tab); `cli.main` is the command line;
`loop` runs a training from checked settings. Importing this package loads nothing heavy.
"""
