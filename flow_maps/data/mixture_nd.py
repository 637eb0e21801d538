"""A Gaussian mixture in d dimensions whose velocity field's Lipschitz constant is a config value
(`docs/method.md` §7; `docs/mixture_nd.md`).

K equal-weight components N(mu_k, s^2 I) in R^d, the means the vertices of a regular simplex
with every pairwise distance D (`separation`), centred at 0, in a random orientation drawn from
`means_seed` (K <= d + 1). Noise N(0, sigma0^2 I), interpolant (alpha, beta).

Why D and s are the knob. Per component, c_t = alpha_t^2 sigma0^2 + beta_t^2 s^2 and
b_k(x) = beta'_t mu_k + g_t (x - beta_t mu_k), g_t = c'_t / (2 c_t) (`docs/method.md` §7). The
exact velocity is b_t(x) = sum_k w_k(x) b_k(x), w_k proportional to N(x; beta_t mu_k, c_t I).
Differentiating the weights (grad w_k = w_k (grad log N_k - sum_j w_j grad log N_j)) gives
    grad b_t(x) = g_t I + h_t Cov_{w(x)}(mu),
    h_t = beta_t (beta'_t - g_t beta_t) / c_t = alpha_t beta_t sigma0^2 (alpha_t beta'_t - alpha'_t beta_t) / c_t^2 >= 0,
a symmetric matrix; Cov_w(mu) is the covariance of the means under the posterior weights. Its
eigenvalues lie in [0, D^2 / 4] (Popoviciu: a variance along any direction is at most a quarter
of the squared width, here at most the diameter D), and D^2 / 4 is approached between two
components (w = 1/2 each, x on their bisector). The spectral norm of g I + h Cov is convex in
Cov's eigenvalues, so
    Lip(b_t) = sup_x |grad b_t(x)| = max(|g_t|, |g_t + h_t D^2 / 4|)    (K >= 2),
and Lip(b) = max_t Lip(b_t) (`lipschitz`), independent of d and K. The first term is a single
Gaussian's (about sigma0 / (2 s) for s << sigma0); the second is the mixture's. For the linear
interpolant and s << sigma0 it peaks at 1 - t = s / (sqrt(3) sigma0), where
    h_t D^2 / 4 ~ 9 sigma0 D^2 / (64 sqrt(3) s^3),
so Lip(b) grows as sigma0 D^2 / s^3: quadratically in the separation, and as the cube of the
inverse component width (not as D^2 / s^2: the worst time itself moves with s). `separation` and
`component_std` are therefore the two config knobs; `lipschitz` gives the resulting constant
exactly (up to the time grid) and the evaluation measures it (`evaluation/mixture_eval.py`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from flow_maps.data.toy2d import IsotropicMixture
from flow_maps.interpolants import Interpolant


def simplex(num_vertices: int, dim: int, edge: float, seed: int) -> np.ndarray:
  """[K, dim]: the vertices of a regular simplex with every edge `edge`, centred at 0, in a
  random orientation (seeded). Needs K <= dim + 1; one vertex is the origin."""
  if num_vertices > dim + 1:
    raise ValueError(f"a regular simplex of {num_vertices} vertices needs dim >= "
                     f"{num_vertices - 1}, got {dim}")
  if num_vertices == 1:
    return np.zeros((1, dim))
  k = num_vertices
  centred = np.eye(k) - 1.0 / k  # rows e_i - mean: pairwise distances sqrt(2), rank k - 1
  basis = np.linalg.svd(centred)[2][:k - 1]  # orthonormal rows spanning them
  coords = centred @ basis.T  # [k, k - 1]
  rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, k - 1)))
  return (edge / math.sqrt(2)) * coords @ rotation.T


@dataclasses.dataclass(frozen=True)
class MixtureND(IsotropicMixture):
  """K components N(mu_k, component_std^2 I) in R^dim, the means a regular simplex of edge
  `separation` (see the module docstring for the Lipschitz constant this sets)."""

  dim: int = 8
  num_components: int = 3
  separation: float = 2.0
  component_std: float = 0.25
  means_seed: int = 0
  name: str = "mixture_nd"

  @property
  def std(self) -> float:
    return self.component_std

  @property
  def means(self) -> np.ndarray:
    """[K, dim]."""
    return simplex(self.num_components, self.dim, self.separation, self.means_seed)

  @property
  def diameter(self) -> float:
    """The largest distance between two means: `separation` (0 with one component)."""
    return self.separation if self.num_components > 1 else 0.0

  def lipschitz_in_time(self, interpolant: Interpolant, t: np.ndarray) -> np.ndarray:
    """sup_x |grad b_t(x)| (spectral norm) at each t: max(|g_t|, |g_t + h_t D^2 / 4|)."""
    ip, s2 = interpolant, self.std**2
    t = np.asarray(t, np.float64)
    a, b, da, db = (np.asarray(f(t), np.float64) for f in (ip.alpha, ip.beta, ip.dalpha, ip.dbeta))
    c = a**2 * ip.sigma0**2 + b**2 * s2
    g = (a * da * ip.sigma0**2 + b * db * s2) / c
    h = a * b * ip.sigma0**2 * (a * db - da * b) / c**2
    return np.maximum(np.abs(g), np.abs(g + h * self.diameter**2 / 4))

  def lipschitz(self, interpolant: Interpolant, num_times: int = 20_001) -> float:
    """Lip(b) = max over t in [0, 1] of `lipschitz_in_time`, on a uniform grid of num_times
    (the peak is about s / sigma0 wide, so 20,001 points resolve it for s >= 1e-3 sigma0)."""
    return float(np.max(self.lipschitz_in_time(interpolant, np.linspace(0.0, 1.0, num_times))))
