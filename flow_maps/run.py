"""What `main.py` runs for each mode, with the user's mistakes turned into one-line errors."""

from __future__ import annotations

import sys

import ml_collections

from flow_maps import checkpoints, cli, train, validation

# Errors that describe a user's input or a run's state: printed as one line, no traceback.
USER_ERRORS = (validation.ConfigError, checkpoints.CheckpointError, train.NonFiniteLossError)


def _user_errors() -> tuple[type[BaseException], ...]:
  errors = USER_ERRORS
  try:
    from flow_maps.data import images
    errors += (images.DatasetNotFoundError,)
  except ImportError:
    pass
  try:
    from flow_maps.evaluation import fid
    errors += (fid.WeightsNotFoundError,)
  except ImportError:
    pass
  return errors


def _check_eval_ready(config: ml_collections.ConfigDict) -> None:
  from flow_maps import data as data_lib
  if not data_lib.is_toy(config):
    from flow_maps.evaluation import image_eval
    image_eval.check_ready(config)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> int:
  """Returns the process exit code: 0 done, 1 the run failed, 2 bad input, 128 + signal when
  stopped by SIGTERM / SIGINT (during training, after saving a checkpoint)."""
  try:
    if mode in ("eval", "train_and_eval"):
      _check_eval_ready(config)  # before training: a long run must not end on a missing file
    if mode in ("train", "train_and_eval"):
      _, stopped_by = train.train(config, workdir)
      if stopped_by is not None:
        return 128 + stopped_by
    if mode in ("eval", "train_and_eval"):
      from flow_maps.evaluation import run_eval
      run_eval.evaluate(config, workdir)
    if mode == "sample":
      from flow_maps.evaluation import run_eval
      run_eval.sample(config, workdir)
    return 0
  except _user_errors() as e:
    kind = "config error" if isinstance(e, validation.ConfigError) else type(e).__name__
    print(f"{kind}: {e}", file=sys.stderr, flush=True)
    return 1 if isinstance(e, train.NonFiniteLossError) else 2
  except cli.Stopped as e:  # outside the training loop: nothing trained is unsaved
    print(cli.stop_message(e.signum, f"during {mode}; nothing trained was left unsaved"),
          file=sys.stderr, flush=True)
    return 128 + e.signum
