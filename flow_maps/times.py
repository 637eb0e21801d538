"""Time sampling: diagonal fraction, the (s, t) distributions of each method, annealing, PSD's u.

`docs/method.md` §4 and §8 (d).

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

import dataclasses
import fractions
import math
from typing import Any, NamedTuple, Optional

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
  """Times for the off-diagonal rows: s <= u <= t with u = h s + (1 - h) t; a per-row weight
  asked for by the time distribution (1.0: none) and, for discrete consistency pairs, the
  target's time s_target > s (None elsewhere)."""

  s: Array
  t: Array
  h: Array
  weight: Any = 1.0
  s_target: Optional[Array] = None

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


def _place_gap(key: Array, d: Array, dtype) -> tuple[Array, Array]:
  """(s, s + d) with s ~ U[0, 1 - d]: a drawn gap placed uniformly where it fits in [0, 1]."""
  s = jax.random.uniform(key, d.shape, dtype) * (1.0 - d)
  return s, s + d


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
  return _place_gap(key_s, d, dtype)


def sample_uniform_gap(key: Array, n: int, gap: Array = 1.0, dtype=jnp.float32
                       ) -> tuple[Array, Array]:
  """(s, t) with the gap d = t - s uniform on [0, gap], then s ~ U[0, 1 - d].

  Against the triangle (density of d proportional to 1 - d) this puts more rows on long jumps:
  P(d > 0.9) is 0.1 instead of 0.01, for the few-step maps that use them.
  """
  key_gap, key_s = jax.random.split(key)
  d = jax.random.uniform(key_gap, (n,), dtype) * jnp.asarray(gap, dtype)
  return _place_gap(key_s, d, dtype)


def sample_long_gap(key: Array, n: int, gap: Array = 1.0, dtype=jnp.float32
                    ) -> tuple[Array, Array]:
  """(s, t) with the gap d = t - s of density 2 d / gap^2 on [0, gap] (d = gap sqrt(u)), then
  s ~ U[0, 1 - d]: the triangle's law of d mirrored, P(d > 0.9) = 0.19."""
  key_gap, key_s = jax.random.split(key)
  d = jnp.sqrt(jax.random.uniform(key_gap, (n,), dtype)) * jnp.asarray(gap, dtype)
  return _place_gap(key_s, d, dtype)


def sample_segments(key: Array, n: int, steps: tuple[int, ...], gap: Array = 1.0,
                    dtype=jnp.float32) -> tuple[Array, Array]:
  """(s, t) inside one step of a few-step sampler: N drawn uniformly from `steps`, s = k / N with
  k uniform in 0 .. N - 1, then t ~ U[s, s + min(1 / N, gap)]. The Lagrangian residual pins
  X_{s, .} along t from s, so these rows train the whole path of each map the N-step sampler
  calls, not only its end point (`docs/recipe.md`)."""
  key_n, key_k, key_t = jax.random.split(key, 3)
  num = jnp.asarray(steps, dtype)[jax.random.randint(key_n, (n,), 0, len(steps))]
  k = jnp.floor(jax.random.uniform(key_k, (n,), dtype) * num)
  s = jnp.minimum(k, num - 1.0) / num
  d = jax.random.uniform(key_t, (n,), dtype) * jnp.minimum(1.0 / num, jnp.asarray(gap, dtype))
  return s, jnp.minimum(s + d, 1.0)


def sample_h(key: Array, n: int, psd_h: str, dtype=jnp.float32) -> Array:
  """PSD's split of [s, t]: 'uniform' (PSD-U, h ~ U(0, 1)) or 'midpoint' (PSD-M, h = 1/2)."""
  if psd_h == "uniform":
    return jax.random.uniform(key, (n,), dtype)
  if psd_h == "midpoint":
    return jnp.full((n,), 0.5, dtype)
  raise ValueError(f"psd_h must be 'uniform' or 'midpoint', got {psd_h!r}")


def sample_off_diagonal_times(key: Array, n: int, gap: Array = 1.0, psd_h: str = "uniform",
                              dtype=jnp.float32) -> OffDiagonalTimes:
  """The paper's off-diagonal times: `TimeDistribution('triangle')`."""
  return TimeDistribution("triangle", psd_h).off_diagonal(key, n, None, gap=gap, dtype=dtype)


# --------------------------------------------------------------------------- time distributions
# The (s, t) law of the off-diagonal rows and the t law of the diagonal rows, one per method
# (`docs/method.md` §8 (d)). Each returns OffDiagonalTimes; `weight` is a per-row factor the
# distribution itself asks for (iCT's 1 / (sigma_{i+1} - sigma_i)), 1 elsewhere, and `t_target`
# is the second time of a discrete pair (iCT), equal to t elsewhere.

TIME_DISTRIBUTIONS = ("triangle", "uniform_gap", "long_gap", "logit_normal", "dyadic", "fixed_end",
                      "ict_grid")
# The laws whose largest gap t - s can be annealed (`objective.anneal_steps`).
ANNEALED = ("triangle", "uniform_gap", "long_gap")


def sample_logit_normal(key: Array, shape, mean: float, std: float, dtype=jnp.float32) -> Array:
  """sigmoid(N(mean, std^2))."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, dtype))


def sample_dyadic(key: Array, n: int, levels: int, dtype=jnp.float32) -> tuple[Array, Array]:
  """Shortcut models' pairs (`docs/method.md` §8): the gap t - s = 2^-k with the level k uniform
  on {0, ..., levels - 1}, and s uniform on the multiples of that gap with t <= 1."""
  key_level, key_start = jax.random.split(key)
  k = jax.random.randint(key_level, (n,), 0, levels)
  cells = jnp.left_shift(1, k)  # 2^k steps of size 2^-k cover [0, 1]
  j = jnp.floor(jax.random.uniform(key_start, (n,), dtype) * cells.astype(dtype))
  j = jnp.minimum(j, (cells - 1).astype(dtype))
  gap = 1.0 / cells.astype(dtype)
  return j * gap, (j + 1.0) * gap


def ict_num_scales(step: Array, total_steps: int, s0: int, s1: int) -> Array:
  """iCT's curriculum (Song & Dhariwal 2023, eq. 7 of 'Improved techniques'): N(k) = min(s0
  2^floor(k / K'), s1) + 1 with K' = floor(K / (log2 floor(s1 / s0) + 1))."""
  k_prime = max(1, int(total_steps // (math.log2(s1 // s0) + 1)))
  doublings = jnp.floor_divide(jnp.asarray(step, jnp.int32), k_prime)
  return jnp.minimum(s0 * jnp.power(2.0, doublings.astype(jnp.float32)), s1).astype(jnp.int32) + 1


def karras_sigmas(num: Array, max_num: int, sigma_min: float, sigma_max: float,
                  rho: float) -> Array:
  """The first `num` of max_num slots hold the Karras grid sigma_i = (sigma_min^(1/rho) +
  i / (num - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, increasing; later slots repeat
  sigma_max."""
  i = jnp.arange(max_num)
  frac = jnp.minimum(i / (num - 1), 1.0)  # the default float dtype
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (lo + frac * (hi - lo)) ** rho


def sample_ict_pairs(key: Array, n: int, num: Array, max_num: int, sigma_min: float,
                     sigma_max: float, rho: float, p_mean: float, p_std: float
                     ) -> tuple[Array, Array]:
  """(sigma_i, sigma_{i+1}) per row: i from iCT's discrete log-normal, p(i) proportional to
  erf((log sigma_{i+1} - p_mean) / (sqrt 2 p_std)) - erf((log sigma_i - p_mean) / (sqrt 2 p_std))
  over i = 0 .. N - 2."""
  sigmas = karras_sigmas(num, max_num, sigma_min, sigma_max, rho)
  # Inverse CDF: one uniform per row and a search of the cumulative pair masses (a categorical
  # draw over all max_num - 1 pairs per row would cost as much as a network pass).
  cdf = jnp.cumsum(jnp.exp(ict_pair_logits(sigmas, num, p_mean, p_std)))
  u = jax.random.uniform(key, (n,), cdf.dtype) * cdf[-1]
  i = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), num - 2)
  return sigmas[i], sigmas[i + 1]


def ict_pair_logits(sigmas: Array, num: Array, p_mean: float, p_std: float) -> Array:
  """Log-probabilities of the pairs (sigma_i, sigma_{i+1}), i < max_num - 1, of the first `num`
  grid levels under iCT's discrete log-normal; -inf past them."""
  cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
  mass = cdf[1:] - cdf[:-1]
  valid = jnp.arange(sigmas.shape[0] - 1) < num - 1
  return jnp.where(valid & (mass > 0), jnp.log(jnp.maximum(mass, 1e-30)), -jnp.inf)


@dataclasses.dataclass(frozen=True)
class TimeDistribution:
  """Which (s, t) a batch trains on (`docs/method.md` §4, §8 (d)); static under jit.

  - triangle: the paper's; t ~ U[0, 1] on the diagonal, (s, t) uniform on s <= t (annealed gap).
  - uniform_gap: the gap t - s uniform on [0, 1] (annealed), then s uniform where it fits: more
    long jumps than the triangle (not published; `docs/recipe.md`).
  - long_gap: the same with the gap's density 2 d, still more long jumps (not published).
  With `segment_fraction` > 0, that fraction of the rows of these three laws is drawn inside one
  step of an N-step sampler instead (`sample_segments`).
  - logit_normal: MeanFlow's; two draws of sigmoid(N(mean, std^2)) sorted into s <= t, the
    diagonal rows at the smaller draw of their own pair (MeanFlow's r = t rows, translated to this
    time direction: `mean` here is minus MeanFlow's).
  - dyadic: shortcut models'; t - s = 2^-k on the grid of its multiples, k < `levels`.
  - fixed_end: consistency models' single-time map, t = 1; s from a log-normal noise level
    sigma = exp(N(noise_mean, noise_std^2)) mapped through the interpolant's noise-to-signal
    ratio alpha_s sigma0 / beta_s = sigma (sCM's proposal).
  - ict_grid: iCT; t = 1, the student at s(sigma_{i+1}), the target at s(sigma_i), adjacent
    levels of the Karras grid whose size follows iCT's curriculum over `total_steps`.
  """

  name: str = "triangle"
  psd_h: str = "uniform"
  logit_normal_mean: float = 0.4
  logit_normal_std: float = 1.0
  dyadic_levels: int = 7
  noise_mean: float = -1.0
  noise_std: float = 1.4
  ict_s0: int = 10
  ict_s1: int = 1280
  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0
  total_steps: int = 1
  segment_fraction: float = 0.0
  segment_steps: tuple[int, ...] = (1, 2, 4)

  def __post_init__(self):
    if self.name not in TIME_DISTRIBUTIONS:
      raise ValueError(f"objective.times: unknown value {self.name!r}; allowed: "
                       f"{', '.join(map(repr, TIME_DISTRIBUTIONS))}")
    if self.psd_h not in ("uniform", "midpoint"):
      raise ValueError(f"objective.psd_h: must be 'uniform' or 'midpoint', got {self.psd_h!r}")

  @property
  def single_time(self) -> bool:
    """True where the map is trained to t = 1 only (consistency models)."""
    return self.name in ("fixed_end", "ict_grid")

  def diagonal(self, key: Array, n: int, dtype=jnp.float32) -> Array:
    if self.name == "logit_normal":
      draws = sample_logit_normal(key, (2, n), self.logit_normal_mean, self.logit_normal_std,
                                  dtype)
      return jnp.min(draws, axis=0)
    return sample_diagonal_times(key, n, dtype)

  def off_diagonal(self, key: Array, n: int, interpolant, *, gap: Array = 1.0,
                   step: Array = 0, dtype=jnp.float32) -> OffDiagonalTimes:
    key_st, key_h = jax.random.split(key)
    h = sample_h(key_h, n, self.psd_h, dtype)
    ones = jnp.ones((n,), dtype)
    if self.name == "triangle":
      s, t = sample_triangle(key_st, n, gap, dtype)
    elif self.name == "uniform_gap":
      s, t = sample_uniform_gap(key_st, n, gap, dtype)
    elif self.name == "long_gap":
      s, t = sample_long_gap(key_st, n, gap, dtype)
    elif self.name == "logit_normal":
      draws = sample_logit_normal(key_st, (2, n), self.logit_normal_mean, self.logit_normal_std,
                                  dtype)
      s, t = jnp.min(draws, axis=0), jnp.max(draws, axis=0)
    elif self.name == "dyadic":
      s, t = sample_dyadic(key_st, n, self.dyadic_levels, dtype)
    elif self.name == "fixed_end":
      sigma = jnp.exp(self.noise_mean + self.noise_std * jax.random.normal(key_st, (n,), dtype))
      s, t = interpolant.time_of_noise_ratio(sigma), ones
    else:  # ict_grid
      num = ict_num_scales(step, self.total_steps, self.ict_s0, self.ict_s1)
      sigma_lo, sigma_hi = sample_ict_pairs(key_st, n, num, self.ict_s1 + 1, self.sigma_min,
                                            self.sigma_max, self.rho, -1.1, 2.0)
      sigma_lo, sigma_hi = sigma_lo.astype(dtype), sigma_hi.astype(dtype)
      return OffDiagonalTimes(s=interpolant.time_of_noise_ratio(sigma_hi), t=ones, h=h,
                              weight=1.0 / (sigma_hi - sigma_lo),
                              s_target=interpolant.time_of_noise_ratio(sigma_lo))
    if self.segment_fraction > 0:
      key_seg, key_pick = jax.random.split(jax.random.fold_in(key_st, 1))
      s_seg, t_seg = sample_segments(key_seg, n, self.segment_steps, gap, dtype)
      pick = jax.random.uniform(key_pick, (n,), dtype) < self.segment_fraction
      s, t = jnp.where(pick, s_seg, s), jnp.where(pick, t_seg, t)
    return OffDiagonalTimes(s=s, t=t, h=h)
