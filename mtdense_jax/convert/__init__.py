"""Weight conversion from PyTorch / original-ViT checkpoints to mtdense_jax.

Generic helpers are in :mod:`mtdense_jax.convert.torch_utils`; each model's
key map and its converters (``CONVERTERS = {source: fn}``) live in the model
file, which imports these helpers lazily. ``python -m mtdense_jax.convert``
is the command-line entry point; it finds the sources through the configured
encoder and decoder plugins.
"""
