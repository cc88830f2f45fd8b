"""Development-only helpers shared by tests/ and benchmarks/: tiny random Stable Diffusion checkpoints written in
the real key layouts (diffusers folders and single files), random Inception weights in the published layouts,
and structured test images. They need the test-only packages (diffusers, transformers); the product never
imports this package."""
