"""python -m mtdense_jax.predict: see mtdense_jax/predict/cli.py."""

import sys

from mtdense_jax.predict import cli

if __name__ == "__main__":
  sys.exit(cli.main())
