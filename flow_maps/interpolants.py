"""Interpolants I_t = alpha_t x0 + beta_t x1 between noise (t = 0) and data (t = 1).

`docs/method.md` §1. Noise x0 ~ N(0, sigma0^2 I); sigma0 scales the noise only, never the data.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def noise(key: jax.Array, shape: tuple[int, ...], sigma0: float, dtype=None) -> Array:
  """x0 ~ N(0, sigma0^2 I) of `shape` (`docs/method.md` §1); dtype None: JAX's default float
  (float64 where x64 is enabled, as the evaluations' references run)."""
  return sigma0 * jax.random.normal(key, shape, dtype)


def per_sample(t: Array, x: Array) -> Array:
  """Reshapes per-sample times [B] so that they broadcast against states x of shape [B, ...]."""
  t = jnp.asarray(t)
  return jnp.reshape(t, t.shape + (1,) * (jnp.ndim(x) - jnp.ndim(t)))


@dataclasses.dataclass(frozen=True)
class Interpolant:
  """alpha_t, beta_t and their time derivatives; all functions act elementwise on t."""

  name: str
  alpha: Callable[[Array], Array]
  beta: Callable[[Array], Array]
  dalpha: Callable[[Array], Array]
  dbeta: Callable[[Array], Array]
  # The time at which the noise-to-signal ratio alpha_t sigma0 / beta_t equals sigma: the EDM
  # noise level of I_t / beta_t = x1 + (alpha_t sigma0 / beta_t) z (consistency models'
  # coordinates, `docs/method.md` §8).
  noise_ratio_time: Callable[[Array, float], Array]
  sigma0: float = 1.0

  def noise(self, key: jax.Array, shape: tuple[int, ...], dtype=None) -> Array:
    """x0 ~ N(0, sigma0^2 I) of `shape`: the one draw of the noise end (training, sampling)."""
    return noise(key, shape, self.sigma0, dtype)

  def interpolate(self, t: Array, x0: Array, x1: Array) -> Array:
    """I_t for per-sample times t of shape [B] and x0, x1 of shape [B, ...]."""
    tb = per_sample(t, x0)
    return self.alpha(tb) * x0 + self.beta(tb) * x1

  def time_of_noise_ratio(self, sigma: Array) -> Array:
    """t with alpha_t sigma0 / beta_t = sigma."""
    return self.noise_ratio_time(sigma, self.sigma0)

  def time_derivative(self, t: Array, x0: Array, x1: Array) -> Array:
    """dI_t = alpha'_t x0 + beta'_t x1 (the conditional velocity)."""
    tb = per_sample(t, x0)
    return self.dalpha(tb) * x0 + self.dbeta(tb) * x1


def linear(sigma0: float = 1.0) -> Interpolant:
  """alpha = 1 - t, beta = t."""
  return Interpolant(
      name="linear",
      alpha=lambda t: 1.0 - t,
      beta=lambda t: t,
      dalpha=lambda t: -jnp.ones_like(t),
      dbeta=lambda t: jnp.ones_like(t),
      noise_ratio_time=lambda sigma, sigma0: sigma0 / (sigma0 + sigma),
      sigma0=sigma0,
  )


def trigonometric(sigma0: float = 1.0) -> Interpolant:
  """alpha = cos(pi t / 2), beta = sin(pi t / 2)."""
  half_pi = jnp.pi / 2
  return Interpolant(
      name="trigonometric",
      alpha=lambda t: jnp.cos(half_pi * t),
      beta=lambda t: jnp.sin(half_pi * t),
      dalpha=lambda t: -half_pi * jnp.sin(half_pi * t),
      dbeta=lambda t: half_pi * jnp.cos(half_pi * t),
      noise_ratio_time=lambda sigma, sigma0: jnp.arctan2(sigma0, sigma) / half_pi,
      sigma0=sigma0,
  )


INTERPOLANTS = {"linear": linear, "trigonometric": trigonometric}


def get_interpolant(name: str, sigma0: float) -> Interpolant:
  if name not in INTERPOLANTS:
    raise ValueError(f"unknown interpolant {name!r}; allowed: {sorted(INTERPOLANTS)}")
  return INTERPOLANTS[name](sigma0)
