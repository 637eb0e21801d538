"""Entry point: `python -m flow_maps.main --config=configs/<experiment>.py --workdir=DIR`.

Modes: train (resumes from DIR's latest checkpoint), eval, sample, and train_and_eval (train,
then evaluate the final state: the demo). Overrides: `--config.train.num_steps=2000` and the like.
Bad input exits 2 with one line on stderr (`cli.py`); SIGTERM / SIGINT exit 143 / 130.
"""

import os
import sys

from flow_maps import cli

cli.install_signal_handlers()  # first: a signal during the imports below exits cleanly too
sys.stdout = cli.PipeSafeStream(sys.stdout)

# TensorFlow only reads data and writes TensorBoard events here: keep it quiet and off oneDNN.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, eval.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "train_and_eval"],
                          "What to do.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "Config fields that may differ from the run's DIR/config.json "
    "although they change its meaning (e.g. objective.stop_gradient), on resume or for eval and "
    "sample; every change is recorded in DIR/config_changes.jsonl.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: one process per host of a "
    "multi-host run (TPU pods and SLURM are detected automatically; otherwise set "
    "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"flag error: unexpected arguments: {' '.join(argv[1:])}")
  try:
    cli.check_workdir(_WORKDIR.value)
  except cli.InputError as e:
    cli.fail(str(e))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO
    # Orbax logs the tracebacks of its failed background saves; the failure itself comes back
    # to us as an exception and is reported in one line (--verbosity=0 shows them again).
    logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
  import jax
  if _DISTRIBUTED.value:
    cli.initialize_distributed()
  from flow_maps import run
  sys.exit(run.run(_CONFIG.value, _WORKDIR.value, _MODE.value,
                   allow_config_change=tuple(_ALLOW_CONFIG_CHANGE.value)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("config"))
