"""Textual Inversion on top of mini_ldm: learned-token files, data, training."""
