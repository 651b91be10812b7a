"""Inference on images of any size (``python -m mtdense_jax.predict``).

geometry: aspect-preserving resize / pad / crop back; predictor: the
Predictor API and dataset metadata; panels: PNGs with legends and colour
bars; cli: the command line.
"""

from mtdense_jax.predict.cli import main, read_image, write_outputs
from mtdense_jax.predict.geometry import (Placement, as_rgb, place,
                                          preprocess, restore)
from mtdense_jax.predict.panels import panel, task_panel
from mtdense_jax.predict.predictor import (META_FILE, META_KEY, Predictor,
                                           checkpoint_meta, latest_step,
                                           load_config, resolve_meta)
