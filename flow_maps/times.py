"""Time sampling for self-distillation: diagonal fraction, the triangle s <= t, annealing, PSD's u.

`docs/method.md` §4.

Batch layout. A fraction eta of the rows sits on the diagonal (s = t, the flow-matching term) and
the rest off it. The published multi-device code puts the diagonal rows first and then splits the
batch into contiguous per-device blocks, so most devices see no off-diagonal row at all. Here the
batch is cut into periods of P rows, the first k = eta P rows of every period being diagonal
(eta = 0.75: P = 4, k = 3). Any contiguous shard made of whole periods therefore holds exactly
the fraction eta, whatever the number of devices, and the layout itself does not depend on the
device count, so one device and many compute the same loss. Splitting rows into the two groups is
a reshape [B] -> [B / P, P] and a slice on the second axis, which stays local to each shard.
"""

from __future__ import annotations

import fractions
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

MAX_PERIOD = 64


class Layout(NamedTuple):
  """Rows come in periods of `period`, the first `diagonal_per_period` of each on the diagonal."""

  period: int
  diagonal_per_period: int

  @property
  def fraction(self) -> float:
    return self.diagonal_per_period / self.period

  def counts(self, batch_size: int) -> tuple[int, int]:
    """(diagonal rows, off-diagonal rows) in a batch of this size."""
    periods = batch_size // self.period
    return periods * self.diagonal_per_period, periods * (self.period - self.diagonal_per_period)

  def split(self, x: Array) -> tuple[Array, Array]:
    """Rows [B, ...] -> (diagonal rows, off-diagonal rows), each in batch order."""
    batch = x.shape[0]
    if batch % self.period:
      raise ValueError(f"batch of {batch} rows is not a whole number of periods of {self.period}")
    grouped = x.reshape((batch // self.period, self.period) + x.shape[1:])
    k = self.diagonal_per_period
    diag = grouped[:, :k].reshape((-1,) + x.shape[1:])
    off = grouped[:, k:].reshape((-1,) + x.shape[1:])
    return diag, off

  def merge(self, diag: Array, off: Array) -> Array:
    """The inverse of `split`."""
    k = self.diagonal_per_period
    periods = (diag.shape[0] + off.shape[0]) // self.period
    grouped = jnp.concatenate([diag.reshape((periods, k) + diag.shape[1:]),
                               off.reshape((periods, self.period - k) + off.shape[1:])], axis=1)
    return grouped.reshape((-1,) + diag.shape[1:])

  def is_diagonal(self, batch_size: int) -> Array:
    """Boolean mask [B]: which rows of a batch are diagonal rows."""
    return (jnp.arange(batch_size) % self.period) < self.diagonal_per_period


def diagonal_layout(fraction: float) -> Layout:
  """The shortest period that realises the diagonal fraction exactly.

  Raises ValueError for a fraction outside [0, 1] or one that is not k / P with P <= 64.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"diagonal fraction must lie in [0, 1], got {fraction}")
  exact = fractions.Fraction(fraction).limit_denominator(MAX_PERIOD)
  if abs(float(exact) - fraction) > 1e-9:
    raise ValueError(f"diagonal fraction {fraction} is not k / P for a period P <= {MAX_PERIOD}; "
                     f"use for example {float(exact)}")
  return Layout(period=exact.denominator, diagonal_per_period=exact.numerator)


class OffDiagonalTimes(NamedTuple):
  """Times for the off-diagonal rows: s <= u <= t with u = h s + (1 - h) t."""

  s: Array
  t: Array
  h: Array

  @property
  def u(self) -> Array:
    return self.h * self.s + (1.0 - self.h) * self.t


def max_gap(step: Array, anneal_start: int, anneal_steps: int) -> Array:
  """The largest allowed t - s at a step: 0 (diagonal only) until `anneal_start`, then widened
  linearly to 1 over `anneal_steps` steps. With anneal_steps = 0 the gap is 1 from the start."""
  if anneal_steps <= 0:
    return jnp.ones((), jnp.float32)
  progress = (jnp.asarray(step, jnp.float32) - anneal_start) / anneal_steps
  return jnp.clip(progress, 0.0, 1.0)


def sample_diagonal_times(key: Array, n: int, dtype=jnp.float32) -> Array:
  """t ~ U[0, 1]."""
  return jax.random.uniform(key, (n,), dtype)


def sample_triangle(key: Array, n: int, gap: Array = 1.0, dtype=jnp.float32) -> tuple[Array, Array]:
  """(s, t) uniform on {0 <= s <= t <= 1, t - s <= gap}.

  The gap d = t - s has density proportional to (1 - d) on [0, gap], drawn by inverting its CDF
  (2d - d^2) / (2 gap - gap^2); then s ~ U[0, 1 - d]. With gap = 1 this is the uniform triangle,
  the same law as s = min(u1, u2), t = max(u1, u2).
  """
  key_gap, key_s = jax.random.split(key)
  gap = jnp.asarray(gap, dtype)
  r = jax.random.uniform(key_gap, (n,), dtype)
  d = 1.0 - jnp.sqrt(jnp.maximum(1.0 - r * gap * (2.0 - gap), 0.0))
  d = jnp.minimum(d, gap)
  s = jax.random.uniform(key_s, (n,), dtype) * (1.0 - d)
  return s, s + d


def sample_h(key: Array, n: int, psd_h: str, dtype=jnp.float32) -> Array:
  """PSD's split of [s, t]: 'uniform' (PSD-U, h ~ U(0, 1)) or 'midpoint' (PSD-M, h = 1/2)."""
  if psd_h == "uniform":
    return jax.random.uniform(key, (n,), dtype)
  if psd_h == "midpoint":
    return jnp.full((n,), 0.5, dtype)
  raise ValueError(f"psd_h must be 'uniform' or 'midpoint', got {psd_h!r}")


def sample_off_diagonal_times(key: Array, n: int, gap: Array = 1.0, psd_h: str = "uniform",
                              dtype=jnp.float32) -> OffDiagonalTimes:
  key_st, key_h = jax.random.split(key)
  s, t = sample_triangle(key_st, n, gap, dtype)
  return OffDiagonalTimes(s=s, t=t, h=sample_h(key_h, n, psd_h, dtype))
