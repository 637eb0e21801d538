"""What `main.py` runs for each mode, with the user's mistakes turned into one-line errors.

The layers meet here: the training loop (`train.py`) takes its evaluators as arguments, and this
module builds them (`run_eval.make_evaluator`) once, after validation; `train.py` never imports
the evaluation layer.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import ml_collections

from flow_maps import checkpoints, cli, train, validation
from flow_maps import workdir as workdir_lib

# Errors that describe a user's input or a run's state: printed as one line, no traceback.
USER_ERRORS = (validation.ConfigError, checkpoints.CheckpointError, train.NonFiniteLossError,
               checkpoints.CheckpointSaveError, workdir_lib.WorkdirError)
# Exit code 1: the run failed (the input was fine); any other of USER_ERRORS: 2, bad input or a
# workdir that cannot be used as it is.
RUN_FAILURES = (train.NonFiniteLossError, checkpoints.CheckpointSaveError)


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


def _evaluates_while_training(config: ml_collections.ConfigDict) -> bool:
  return config.train.eval_schedule == "log" or bool(config.train.eval_every)


def _train(config: ml_collections.ConfigDict, workdir: str,
           allow_config_change: tuple[str, ...]) -> Optional[int]:
  """Builds the experiment (validating the config) and the evaluator the config asks for, then
  trains; returns the signal that stopped the run, or None."""
  exp = train.build_experiment(config)
  evaluators = ()
  if _evaluates_while_training(config):
    from flow_maps.evaluation import run_eval
    evaluators = (run_eval.make_evaluator(exp, workdir,
                                          num_samples=config.train.eval_num_samples or None),)
  _, stopped_by = train.train(config, workdir, exp=exp, evaluators=evaluators,
                              allow_config_change=allow_config_change)
  return stopped_by


def run(config: ml_collections.ConfigDict, workdir: str, mode: str,
        allow_config_change: tuple[str, ...] = ()) -> int:
  """Returns the process exit code: 0 done, 1 the run failed, 2 bad input, 128 + signal when
  stopped by SIGTERM / SIGINT (during training, after saving a checkpoint)."""
  cli.running()
  try:
    if mode in ("eval", "train_and_eval") or (mode == "train" and
                                              _evaluates_while_training(config)):
      # Before training: a long run must not end on a missing file.
      validation.check_eval_files(config)
      from flow_maps.evaluation import run_eval
      run_eval.check_ready(config)
    if mode in ("train", "train_and_eval"):
      stopped_by = _train(config, workdir, allow_config_change)
      if stopped_by is not None:
        return 128 + stopped_by
    if mode in ("eval", "train_and_eval"):
      from flow_maps.evaluation import run_eval
      run_eval.evaluate(config, workdir, allow_config_change)
    if mode == "sample":
      from flow_maps.evaluation import run_eval
      run_eval.sample(config, workdir, allow_config_change)
    if cli.received is not None:  # a signal whose exception was swallowed on the way
      raise cli.Stopped(cli.received)
    return 0
  except _user_errors() as e:
    kind = "config error" if isinstance(e, validation.ConfigError) else type(e).__name__
    print(f"{kind}: {e}", file=sys.stderr, flush=True)
    if isinstance(e, checkpoints.CheckpointSaveError):
      # Orbax leaves non-daemon threads waiting for a commit that will never come; the
      # interpreter would wait for them forever. Everything of ours is closed and flushed.
      sys.stdout.flush()
      os._exit(1)
    return 1 if isinstance(e, RUN_FAILURES) else 2
  except OSError as e:  # the machine's fault (disk full, workdir gone): one line, the file named
    print(f"I/O error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return 1
  except cli.Stopped as e:  # outside the training loop: nothing trained is unsaved
    print(cli.stop_message(e.signum, f"during {mode}; nothing trained was left unsaved"),
          file=sys.stderr, flush=True)
    return 128 + e.signum
