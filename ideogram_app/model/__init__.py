"""Native PyTorch modules of Ideogram 4 (DiT, FLUX.2 VAE, text features); loading lives in `ideogram_app.loading`."""
