"""Where the train step gets its data: one interface for toy data and images.

A `BatchSource` has two halves, one on each side of the jitted step:
  - `batches(start_step)`: on the host, the global batch of every step from `start_step` on, in
    the layout `abstract_batch()` describes (the step is compiled for that);
  - `draw(key, batch)`: inside the step, with the step's data key and that host batch, the
    examples x1 and their labels (None unless data.conditional).

Toy data (`ToySource`) is drawn in JAX from the step's key inside the step: its host batch is
the empty tuple, so the step takes no data from the host, and a resumed or multi-device run
needs no pipeline state. Images (`ImageSource`) are read on the host by step (`images.py`:
the batch is a function of the step alone, so resuming needs only the step) and `draw` returns
them as they came. Either way the loop is the same: `next(batches)`, then `step(state, batch)`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterator, Optional, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding


class BatchSource(Protocol):
  """The train step's data (see the module docstring)."""

  def abstract_batch(self) -> Any:
    """The global host batch the step takes, as `jax.ShapeDtypeStruct`s with their sharding."""

  def batches(self, start_step: int) -> Iterator[Any]:
    """The global host batches of steps start_step, start_step + 1, ...; endless. Close it (a
    generator) to stop its readers."""

  def draw(self, key: jax.Array, batch: Any) -> tuple[jax.Array, Optional[jax.Array]]:
    """Traced inside the step: (x1 [B, ...], labels [B] int32 or None)."""


@dataclasses.dataclass(frozen=True)
class ToySource:
  """A toy dataset (`toy2d.py`, `mixture_nd.py`) drawn inside the step from the step's key;
  with `labelled`, by `sample_labelled`, whose x1 are `sample`'s bitwise."""

  dataset: Any
  batch_size: int
  labelled: bool

  def abstract_batch(self) -> tuple:
    return ()

  def batches(self, start_step: int) -> Iterator[tuple]:
    del start_step  # a step's data is a function of its key alone
    yield from itertools.repeat(())

  def draw(self, key: jax.Array, batch: tuple) -> tuple[jax.Array, Optional[jax.Array]]:
    del batch
    if self.labelled:
      return self.dataset.sample_labelled(key, self.batch_size)
    return self.dataset.sample(key, self.batch_size), None


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """An image dataset read on the host by step (`images.ImageDataset.batches`): each process
  reads its own rows of every global batch (ahead, in threads, or in `workers` grain processes)
  and the rows become one global array sharded along the batch; with `labelled`, (images,
  labels) pairs of the same rows. `open()` loads the dataset (tfds data must be prepared)."""

  open: Callable[[], Any]  # () -> images.ImageDataset
  batch_size: int
  shape: tuple[int, ...]
  sharding: NamedSharding
  labelled: bool
  workers: int = 0

  def abstract_batch(self) -> Any:
    x = jax.ShapeDtypeStruct((self.batch_size,) + self.shape, jnp.float32,
                             sharding=self.sharding)
    if not self.labelled:
      return x
    return x, jax.ShapeDtypeStruct((self.batch_size,), jnp.int32, sharding=self.sharding)

  def batches(self, start_step: int) -> Iterator[Any]:
    """Opens the dataset now (a missing one fails here, not at the first `next`)."""
    local = self.open().batches(start_step, self.batch_size, jax.process_index(),
                                jax.process_count(), with_labels=self.labelled,
                                workers=self.workers)
    return self._global(local)

  def _global(self, local: Iterator[Any]) -> Iterator[Any]:
    def make(x, shape):
      return jax.make_array_from_process_local_data(self.sharding, x, shape)

    shape = (self.batch_size,) + self.shape
    try:
      for rows in local:
        if self.labelled:
          x, y = rows
          yield make(x, shape), make(y, (self.batch_size,))
        else:
          yield make(rows, shape)
    finally:
      local.close()

  def draw(self, key: jax.Array, batch: Any) -> tuple[jax.Array, Optional[jax.Array]]:
    del key  # the host chose the examples
    return batch if self.labelled else (batch, None)
