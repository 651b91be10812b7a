"""Weight conversion from PyTorch / original-ViT checkpoints to mtdense_jax.

Generic helpers are in :mod:`mtdense_jax.convert.torch_utils`; each model's
key map (``from_torch``) lives next to the model. ``python -m
mtdense_jax.convert`` is the command-line entry point.
"""
