"""Orbax checkpoints in `DIR/checkpoints`: periodic, bounded in number, atomic, restored on start.

A checkpoint holds the whole train state (parameters, optimiser state, EMAs, step, RNG key); the
data position is the step (toy data is drawn from the step's key, images are read by step), so
a restored run continues exactly where it stopped.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir cannot be restored into this run."""


class Checkpoints:
  """A thin wrapper over `orbax.checkpoint.CheckpointManager`."""

  def __init__(self, workdir: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=create))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save; the commit is atomic (a killed save leaves no checkpoint)."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores `step` (the latest by default) with the structure, dtypes and shardings of
    `target` (a state or its abstract shapes)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types; name the checkpoint and the cause
      raise CheckpointError(
          f"cannot restore the checkpoint at step {step} in {self.directory} into this run "
          f"(was it written by a different model or config?): {type(e).__name__}: {e}") from e

  def restore_raw(self, step: int) -> Any:
    """The checkpoint at `step` as saved (nested dicts and lists of host arrays), without a target:
    for reading another run's weights (`pretrained.py`)."""
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # orbax raises many types; name the checkpoint and the cause
      raise CheckpointError(f"cannot read the checkpoint at step {step} in {self.directory}: "
                            f"{type(e).__name__}: {e}") from e

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
