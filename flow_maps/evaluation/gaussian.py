"""Closed-form velocity and flow map for Gaussian data (`docs/method.md` §7).

Data x1 ~ N(mu, Sigma), noise x0 ~ N(0, sigma0^2 I), I_t = alpha_t x0 + beta_t x1. In Sigma's
eigenbasis, per direction i with data variance lambda_i:
  c_t = alpha_t^2 sigma0^2 + beta_t^2 lambda_i,
  b_t(x) = beta'_t mu + (c'_t / (2 c_t)) (x - beta_t mu),
  X_{s,t}(x) = beta_t mu + sqrt(c_t / c_s) (x - beta_s mu).
All functions are batched like the rest of the package: times [B], states [B, d].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from flow_maps.interpolants import Interpolant, per_sample

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianFlow:
  """The exact flow of N(0, sigma0^2 I) -> N(mean, cov) under an interpolant."""

  interpolant: Interpolant
  mean: Array  # [d]
  cov: Array  # [d, d], symmetric positive definite

  @property
  def _eig(self) -> tuple[Array, Array]:
    lam, Q = jnp.linalg.eigh(self.cov)
    return lam, Q

  def _c(self, t: Array) -> Array:
    """Variance of I_t per eigen-direction: [B, d]."""
    lam, _ = self._eig
    a, b = self.interpolant.alpha(t)[:, None], self.interpolant.beta(t)[:, None]
    return a**2 * self.interpolant.sigma0**2 + b**2 * lam

  def _dc(self, t: Array) -> Array:
    lam, _ = self._eig
    ip = self.interpolant
    a, b = ip.alpha(t)[:, None], ip.beta(t)[:, None]
    da, db = ip.dalpha(t)[:, None], ip.dbeta(t)[:, None]
    return 2 * a * da * ip.sigma0**2 + 2 * b * db * lam

  def velocity(self, t: Array, x: Array) -> Array:
    """b_t(x) [B, d]."""
    _, Q = self._eig
    ip = self.interpolant
    centred = (x - per_sample(ip.beta(t), x) * self.mean) @ Q
    scaled = (self._dc(t) / (2 * self._c(t))) * centred
    return per_sample(ip.dbeta(t), x) * self.mean + scaled @ Q.T

  def flow_map(self, s: Array, t: Array, x: Array) -> Array:
    """X_{s,t}(x) [B, d]."""
    _, Q = self._eig
    ip = self.interpolant
    centred = (x - per_sample(ip.beta(s), x) * self.mean) @ Q
    scaled = jnp.sqrt(self._c(t) / self._c(s)) * centred
    return per_sample(ip.beta(t), x) * self.mean + scaled @ Q.T

  def v(self, s: Array, t: Array, x: Array) -> Array:
    """The exact v_{s,t}(x) = (X_{s,t}(x) - x) / (t - s), with v_{t,t} = b_t on the diagonal.

    This is the "network" that makes every residual vanish. Where t = s the formula is 0/0, so
    the diagonal takes the velocity (the two agree in the limit; the jvp derivatives of a
    `jnp.where` are those of the branch taken, so gradients stay exact off the diagonal).
    """
    gap = per_sample(t - s, x)
    safe = jnp.where(gap == 0, 1.0, gap)
    off = (self.flow_map(s, t, x) - x) / safe
    return jnp.where(gap == 0, self.velocity(t, x), off)

  def sample_data(self, key: Array, n: int) -> Array:
    L = jnp.linalg.cholesky(self.cov)
    z = jax.random.normal(key, (n, self.mean.shape[0]), self.mean.dtype)
    return self.mean + z @ L.T
