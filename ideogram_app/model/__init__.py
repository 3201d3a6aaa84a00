"""Native PyTorch implementation of the Ideogram 4 components (DiT, FLUX.2 VAE, text features)."""
