"""Exact velocities of the toy datasets (2-D, and the d-D mixture) and reference flow maps by an accurate ODE solve.

`docs/method.md` §1, §2, §7. For data x1 ~ p, noise x0 ~ N(0, sigma0^2 I) and I_t = alpha_t x0 +
beta_t x1, the velocity is
    b_t(x) = E[dI_t | I_t = x] = alpha'_t E[x0 | I_t = x] + beta'_t E[x1 | I_t = x].
Written this way (rather than as (alpha'/alpha) x + (beta' - alpha' beta / alpha) E[x1 | x]) it
has no 0/0 at either end: E[x0 | x] and E[x1 | x] are both computed directly.

  - Gaussian mixture (isotropic components, any dimension: the 2-D ring and `MixtureND`): the
    posterior-weighted sum of the per-component Gaussian velocities of `gaussian.py`, weights by
    logsumexp. Finite on all of [0, 1].
  - Uniform density on a union of boxes (the checkerboard): given I_t = x and a box, x1 is a
    product of truncated normals, one per coordinate, and the box's posterior weight is the
    product of their masses (`_truncated_normal`). Exact at t = 0. At t = 1 the posterior is a
    point mass and alpha = 0 divides, so t is clamped to at most T_MAX = 1 - 1e-5: on the last
    1e-5 of time the velocity is held at b_{T_MAX}, which moves a trajectory by at most
    1e-5 |b| (about 1e-5 here).

The reference flow map X_{s,t}(x) integrates dx/dt = b_t(x) from s to t (either direction, any
s, t in [0, 1]) with diffrax's Tsit5 and a PID controller (rtol = atol = 1e-6 by default, max
norm over the batch). On the checkerboard from s = 0 to t = 1 in float32 (2,000 samples, about 70
steps) it is within 2e-4 of a float64 solve at rtol = 1e-9 for every sample, mean squared error
2e-11.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfcx, logsumexp, ndtr

from flow_maps.data.toy2d import Checkerboard, IsotropicMixture, Toy2D
from flow_maps.interpolants import Interpolant, per_sample

Array = jax.Array
Velocity = Callable[[Array, Array], Array]  # b(t [B], x [B, d]) -> [B, d]

T_MAX = 1.0 - 1e-5

# Gauss-Legendre on [0, 1] for the narrow-interval branch of `_truncated_normal`.
_GL_Z, _GL_W = np.polynomial.legendre.leggauss(12)
_GL_Z, _GL_LOG_W = (_GL_Z + 1) / 2, np.log(_GL_W / 2)


# Mills ratio R(x) = Q(x) / phi(x), Q = 1 - Phi, for x >= 0. Below MILLS_SWITCH through erfcx;
# above it by the asymptotic series R(x) = (1 / x) sum_k (-1)^k (2k - 1)!! / x^(2k), whose 20
# terms are exact to rounding there (the last is 39!! / 10^40 ~ 3e-17). The series also avoids
# jax.scipy.special.erfcx, which returns 0 for float32 arguments in [9.195, 9.419] and float64
# ones in [26.54, 26.64] (jax 0.10.2), and gives 1 - x R(x) without cancellation.
_MILLS_SWITCH = 10.0
_MILLS_TERMS = 20


def _mills(x: Array) -> tuple[Array, Array]:
  """(R(x), 1 - x R(x)) for x >= 0, R(x) = Q(x) / phi(x); 1 - x R(x) is about 1 / x^2 when large."""
  small = jnp.minimum(x, _MILLS_SWITCH)
  r_small = math.sqrt(math.pi / 2) * erfcx(small / math.sqrt(2))
  large = jnp.maximum(x, _MILLS_SWITCH)
  inv, s_large, term = 1 / large**2, jnp.zeros_like(x), jnp.ones_like(x)
  for k in range(1, _MILLS_TERMS + 1):  # sum_{k >= 1} (-1)^(k + 1) (2k - 1)!! / x^(2k)
    term = -term * (2 * k - 1) * inv
    s_large = s_large - term
  use_series = x >= _MILLS_SWITCH
  return (jnp.where(use_series, (1 - s_large) / large, r_small),
          jnp.where(use_series, s_large, 1 - small * r_small))


@jax.jit
def _truncated_normal(alpha: Array, delta: Array) -> tuple[Array, Array, Array]:
  """u ~ N(0, 1) restricted to [alpha, alpha + delta], delta >= 0, elementwise.

  Returns (log Z, E[u], E[z]) with Z = int_0^1 exp(-(alpha + delta z)^2 / 2) dz (the mass of the
  interval over its width, up to sqrt(2 pi)) and z = (u - alpha) / delta in [0, 1].

  Three cases, all finite for any finite input:
    - kappa = delta (max(|alpha|, |beta|) + 1) < 4, beta = alpha + delta (a narrow interval on
      the normal's scale, e.g. t -> 0 where delta -> 0): 12-point Gauss-Legendre in z. The
      log-integrand varies by less than 4, so this is exact to rounding, and delta = 0 gives the
      uniform limit.
    - Otherwise, after mirroring u -> -u so that the interval's centre is >= 0:
      - an interval holding 0: Phi(beta) - Phi(alpha) directly (it is at least 0.4 here);
      - an interval in the tail (alpha >= 0): through the Mills ratio R (`_mills`), which never
        underflows: with rho = phi(beta) / phi(alpha) (at most 1/e here) and
        D = R(alpha) - rho R(beta),
          Q(alpha) - Q(beta) = phi(alpha) D,
          E[u] - alpha = ((1 - alpha R(alpha)) - rho (1 - alpha R(beta))) / D,
        with 1 - x R(x) from its own series for large x (`_mills`).
  In float32, E[u] and E[z] are within a few 1e-6 of the float64 values for |alpha| up to 60.
  """
  beta = alpha + delta
  kappa = delta * (jnp.maximum(jnp.abs(alpha), jnp.abs(beta)) + 1)
  narrow = kappa < 4

  # Quadrature.
  z = jnp.asarray(_GL_Z, alpha.dtype)
  log_f = jnp.asarray(_GL_LOG_W, alpha.dtype) - 0.5 * (alpha[..., None] + delta[..., None] * z)**2
  log_z_quad = logsumexp(log_f, axis=-1)
  ez_quad = jnp.sum(jax.nn.softmax(log_f, axis=-1) * z, axis=-1)

  # Normal CDF, with every input kept finite where its case is not the one used.
  d = jnp.where(narrow, 1.0, delta)
  mirror = alpha + beta < 0
  a = jnp.where(narrow, 0.0, jnp.where(mirror, -beta, alpha))
  b = a + d
  log_phi = lambda u: -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
  tail = a >= 0
  # Interval holding 0.
  a0, b0 = jnp.where(tail, -0.5, a), jnp.where(tail, 0.5, b)
  mass = ndtr(b0) - ndtr(a0)
  log_mass_0 = jnp.log(mass)
  ez_0 = ((jnp.exp(log_phi(a0)) - jnp.exp(log_phi(b0))) / mass - a0) / (b0 - a0)
  # Interval in the tail.
  a1, b1 = jnp.where(tail, a, 0.0), jnp.where(tail, b, 1.0)
  rho = jnp.exp(-0.5 * (b1 - a1) * (a1 + b1))
  (r_a, s_a), (r_b, s_b) = _mills(a1), _mills(b1)  # s = 1 - x R(x)
  D = r_a - rho * r_b
  log_mass_1 = log_phi(a1) + jnp.log(D)
  one_minus_a_r_b = (1 - a1 / b1) + (a1 / b1) * s_b  # 1 - alpha R(beta)
  ez_1 = (s_a - rho * one_minus_a_r_b) / (D * (b1 - a1))

  log_z_cdf = jnp.where(tail, log_mass_1, log_mass_0) + 0.5 * math.log(2 * math.pi) - jnp.log(d)
  ez_cdf = jnp.clip(jnp.where(tail, ez_1, ez_0), 0.0, 1.0)
  ez_cdf = jnp.where(mirror, 1 - ez_cdf, ez_cdf)

  log_z = jnp.where(narrow, log_z_quad, log_z_cdf)
  ez = jnp.where(narrow, ez_quad, ez_cdf)
  eu = alpha + delta * ez
  return log_z, eu, ez


def boxes_velocity(lows: np.ndarray, highs: np.ndarray, interpolant: Interpolant) -> Velocity:
  """Exact b_t(x) for x1 uniform on a union of disjoint boxes (`_boxes`)."""
  return jax.jit(_boxes(lows, highs, interpolant)[0])


def _boxes(lows: np.ndarray, highs: np.ndarray, interpolant: Interpolant):
  """(b_t(x), per-box b_t(x | box k) [B, K, d]) for x1 uniform on a union of disjoint boxes
  [lows_k, highs_k), [K, d] each.

  Per box k and coordinate i, with u = (beta y - x) / (alpha sigma0) = -x0 / sigma0:
    alpha_ki = (beta lo_ki - x_i) / (alpha sigma0),
    delta_ki = beta (hi_ki - lo_ki) / (alpha sigma0);
  box k's posterior log-weight is sum_i [log(hi - lo) + log Z_ki] (the density is the same on
  every box), E[x1_i | k] = lo + (hi - lo) E[z], E[x0_i | k] = -sigma0 E[u]. The truncated
  normals are computed once per distinct interval of each axis (4 per axis for the checkerboard's
  8 cells) and shared by the boxes.
  """
  ip, sigma0 = interpolant, interpolant.sigma0
  lows, highs = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
  dim = lows.shape[1]
  per_axis = [np.unique(np.stack([lows[:, i], highs[:, i]], -1), axis=0, return_inverse=True)
              for i in range(dim)]
  width = max(len(u) for u, _ in per_axis)
  # intervals [d, U, 2], padded by repeating the first; which interval each box uses: [K, d].
  intervals = np.stack([np.concatenate([u, np.repeat(u[:1], width - len(u), 0)])
                        for u, _ in per_axis])
  which = np.stack([np.reshape(inv, (-1,)) for _, inv in per_axis], axis=-1).astype(np.int32)
  axis = np.arange(dim, dtype=np.int32)[None, :]

  def posterior(t: Array, x: Array):
    t = jnp.minimum(t, T_MAX)
    lo, hi = (jnp.asarray(intervals[..., j], x.dtype) for j in (0, 1))  # [d, U]
    a, b = per_sample(ip.alpha(t), x), per_sample(ip.beta(t), x)  # [B, 1]
    scale = (a * sigma0)[:, None]  # [B, 1, 1]
    alpha = (b[:, None] * lo - x[:, :, None]) / scale  # [B, d, U]
    delta = jnp.broadcast_to(b[:, None] * (hi - lo) / scale, alpha.shape)
    log_z, eu, ez = _truncated_normal(alpha, delta)
    x1 = lo + (hi - lo) * ez
    log_z, eu, x1 = (f[:, axis, which] for f in (log_z + jnp.log(hi - lo), eu, x1))  # [B, K, d]
    w = jax.nn.softmax(jnp.sum(log_z, axis=-1), axis=-1)[..., None]  # [B, K, 1]
    return t, w, eu, x1

  def velocity(t: Array, x: Array) -> Array:
    t, w, eu, x1 = posterior(t, x)
    e_x1 = jnp.sum(w * x1, axis=1)
    e_x0 = -sigma0 * jnp.sum(w * eu, axis=1)
    return per_sample(ip.dalpha(t), x) * e_x0 + per_sample(ip.dbeta(t), x) * e_x1

  def per_box(t: Array, x: Array) -> Array:
    """[B, K, d]: b_t(x | x1 in box k), the velocity of the data restricted to one box."""
    t, _, eu, x1 = posterior(t, x)
    return (ip.dalpha(t)[:, None, None] * (-sigma0 * eu) + ip.dbeta(t)[:, None, None] * x1)

  return velocity, per_box


def mixture_velocity(means: np.ndarray, std: float, log_weights: np.ndarray,
                     interpolant: Interpolant) -> Velocity:
  """Exact b_t(x) for x1 ~ sum_k pi_k N(mu_k, std^2 I) (`docs/method.md` §7), means [K, d].

  Per component c = alpha^2 sigma0^2 + beta^2 std^2 and b_k = beta' mu_k + (c' / 2c)(x - beta mu_k);
  weights proportional to pi_k N(x; beta mu_k, c I). The same c for every component, so the
  weights only see the distances; std > 0 keeps c > 0 at t = 1.
  """
  return jax.jit(_mixture(means, std, log_weights, interpolant)[0])


def _mixture(means: np.ndarray, std: float, log_weights: np.ndarray, interpolant: Interpolant):
  """(b_t(x), per-component b_t(x | component k) [B, K, d]) of the mixture."""
  ip = interpolant

  def posterior(t: Array, x: Array):
    mu, log_pi = jnp.asarray(means, x.dtype), jnp.asarray(log_weights, x.dtype)
    a, b = per_sample(ip.alpha(t), x), per_sample(ip.beta(t), x)  # [B, 1]
    da, db = per_sample(ip.dalpha(t), x), per_sample(ip.dbeta(t), x)
    c = a**2 * ip.sigma0**2 + b**2 * std**2
    dc = 2 * a * da * ip.sigma0**2 + 2 * b * db * std**2
    centred = x[:, None, :] - b[:, None] * mu  # [B, K, d]
    log_w = log_pi - jnp.sum(centred**2, axis=-1) / (2 * c)  # [B, K]
    w = jax.nn.softmax(log_w, axis=-1)[..., None]
    per_component = db[:, None] * mu + (dc / (2 * c))[:, None] * centred
    return w, per_component

  def velocity(t: Array, x: Array) -> Array:
    w, per_component = posterior(t, x)
    return jnp.sum(w * per_component, axis=1)

  return velocity, lambda t, x: posterior(t, x)[1]


def exact_velocity(dataset: Toy2D, interpolant: Interpolant) -> Velocity:
  """The exact b_t(x) of a toy dataset under an interpolant (with its sigma0)."""
  if isinstance(dataset, Checkerboard):
    return boxes_velocity(*dataset.cells, interpolant)
  if isinstance(dataset, IsotropicMixture):
    return mixture_velocity(dataset.means, dataset.std, dataset.log_weights, interpolant)
  raise TypeError(f"no exact velocity for {type(dataset).__name__}")


def guided_velocity(dataset: Toy2D, interpolant: Interpolant):
  """The exact guided velocity b^w_t(x|c) = b_t(x) + w (b_t(x|c) - b_t(x)) of a labelled toy
  dataset (`docs/method.md` §7, §9) as fn(t [B], x [B, d], label [B] int, w [B]); b(.|c) is the
  velocity of class c's data alone (one component, one cell), b the unconditional one, and the
  null label (the class count) gives b at any w."""
  if isinstance(dataset, Checkerboard):
    both, per_class = _boxes(*dataset.cells, interpolant)
  elif isinstance(dataset, IsotropicMixture):
    both, per_class = _mixture(dataset.means, dataset.std, dataset.log_weights, interpolant)
  else:
    raise TypeError(f"no exact velocity for {type(dataset).__name__}")

  def velocity(t: Array, x: Array, label: Array, w: Array) -> Array:
    b = both(t, x)
    k = dataset.num_classes
    b_c = jnp.take_along_axis(per_class(t, x), jnp.minimum(label, k - 1)[:, None, None], axis=1)
    b_c = jnp.where((label < k)[:, None], b_c[:, 0], b)
    return b + per_sample(w, x) * (b_c - b)

  return jax.jit(velocity)


def _max_norm(y: Array) -> Array:
  return jnp.max(jnp.abs(y))


@dataclasses.dataclass(frozen=True)
class ReferenceFlow:
  """The flow map of a velocity b_t(x) by an adaptive ODE solve (`docs/method.md` §2, §7).

  Same interface as `gaussian.GaussianFlow`: `velocity(t, x)`, `flow_map(s, t, x)` and `v(s, t, x)`
  (the velocity field whose map is this one, so samplers and evaluation accept it as a model).
  """

  velocity: Velocity
  rtol: float = 1e-6
  atol: float = 1e-6
  max_steps: int = 4096

  @functools.partial(jax.jit, static_argnums=0)
  def flow_map(self, s: Array, t: Array, x: Array, *args: Array) -> Array:
    """X_{s,t}(x) for s, t [B], x [B, d]: dx/dtau = b_tau(x) from tau = s to tau = t.

    Every sample runs on its own time interval, s > t backwards and s = t not at all, through
    one batched solve in r in [0, 1]: tau = s + r (t - s), dx/dr = (t - s) b_tau(x). The step
    size is shared and controlled by the worst sample (max norm), so every sample meets the
    tolerance. Tsit5 with a PID controller. `args` (per-sample arrays, a label and a guidance
    scale for `guided_velocity`) are passed on to the velocity.
    """
    gap = per_sample(t - s, x)

    def rhs(r, y, _):
      return gap * self.velocity(s + r * (t - s), y, *args)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs), diffrax.Tsit5(), t0=0.0, t1=1.0, dt0=None, y0=x,
        stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=_max_norm),
        saveat=diffrax.SaveAt(t1=True), max_steps=self.max_steps)
    return solution.ys[0]

  def v(self, s: Array, t: Array, x: Array) -> Array:
    """(X_{s,t}(x) - x) / (t - s), and b_t(x) on the diagonal."""
    gap = per_sample(t - s, x)
    safe = jnp.where(gap == 0, 1.0, gap)
    return jnp.where(gap == 0, self.velocity(t, x), (self.flow_map(s, t, x) - x) / safe)


@functools.lru_cache(maxsize=16)
def guided_reference_flow(dataset: Toy2D, interpolant: Interpolant, **solver) -> ReferenceFlow:
  """The reference flow of `guided_velocity`: its flow_map takes (label [B], w [B]) after x."""
  return ReferenceFlow(guided_velocity(dataset, interpolant), **solver)


@functools.lru_cache(maxsize=16)
def reference_flow(dataset: Toy2D, interpolant: Interpolant, **solver) -> ReferenceFlow:
  """The reference flow of a toy dataset: its exact velocity, solved by `ReferenceFlow`.

  Cached, so that repeated evaluations with the same dataset and interpolant objects reuse the
  compiled solve."""
  return ReferenceFlow(exact_velocity(dataset, interpolant), **solver)
