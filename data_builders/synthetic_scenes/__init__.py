"""Procedurally generated indoor scenes: the default, download-free dataset.

See builder.py for the TFDS builder and render.py for the conventions of the
targets (depth, normal axes, edges, saliency, parts).
"""

from data_builders.synthetic_scenes.builder import Builder
from data_builders.synthetic_scenes.builder import BUILDER_CONFIGS
from data_builders.synthetic_scenes.builder import make_builder
from data_builders.synthetic_scenes.builder import render_example
from data_builders.synthetic_scenes.builder import SceneConfig

__all__ = ["Builder", "BUILDER_CONFIGS", "make_builder", "render_example",
           "SceneConfig"]
