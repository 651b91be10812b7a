r"""Entry point: python launch.py --config configs/x.py[:arg] --workdir W.

  --config.a.b=v      override any config field (unknown keys are an error)
  --mode train|eval   eval restores only the params of the latest (or
                      --checkpoint/--step) checkpoint and runs every metric
Compiled programs are kept in ~/.cache/mtdense_jax/jit (config.compile_cache;
MTDENSE_JAX_CACHE=DIR or =off), so a rerun or resume starts in seconds.
Multi-process (SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/
JAX_PROCESS_ID) is detected by jax.distributed.initialize().
"""

import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from mtdense_jax import config_check, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to run.")
flags.DEFINE_string("checkpoint", None, "Eval: checkpoints dir to restore.")
flags.DEFINE_integer("step", None, "Eval: checkpoint step (default latest).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = _CONFIG.value
  # absl.app turns INFO on, and orbax/TFDS/jax are very chatty at INFO.
  runtime.quiet_logs(verbose=FLAGS["verbosity"].present)
  # Multi-host (before anything touches a backend) and the persistent
  # compilation cache (config.compile_cache).
  runtime.initialize(config=config)
  try:
    config_check.validate(config)
  except config_check.ConfigError as e:
    config_check.exit_with(e)
  logging.info("process %d/%d, devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  # pylint: disable=g-import-not-at-top
  from data_builders import common as data_common
  from mtdense_jax.train import checkpointing, loop
  # pylint: enable=g-import-not-at-top
  try:
    if FLAGS.mode == "train":
      loop.train_and_evaluate(config, FLAGS.workdir)
    else:
      loop.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint,
                               FLAGS.step)
  except (FileNotFoundError,   # missing dataset archive or checkpoint
          data_common.CorruptMemberError,  # bad member or label values
          checkpointing.CheckpointError,   # names path, step and cause
          FloatingPointError) as e:        # the NaN guard names the tasks
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  runtime.help_and_exit_if_asked(sys.argv, __doc__)
  config_check.run_checked(app.run, main)
