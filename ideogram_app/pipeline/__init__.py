"""Text-to-image and img2img pipeline around the Ideogram 4 model stack."""
