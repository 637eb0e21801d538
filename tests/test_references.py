"""Exact velocities of the 2-D datasets and the reference flow map (`docs/method.md` §1, §2, §7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from flow_maps import interpolants
from flow_maps.data import toy2d
from flow_maps.evaluation import kl, references
from flow_maps.evaluation.gaussian import GaussianFlow

INTERPOLANTS = [("linear", 0.577), ("trigonometric", 1.0)]


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(-60, 60), delta=st.floats(0, 30))
def test_truncated_normal_matches_high_precision(alpha, delta):
  """log Z, E[u], E[z] of N(0, 1) on [alpha, alpha + delta] against adaptive quadrature, in both
  branches (narrow intervals by Gauss-Legendre, wide or far ones by the normal CDF)."""
  with jax.enable_x64(True):
    log_z, eu, ez = (float(v[0]) for v in references._truncated_normal(
        jnp.array([alpha]), jnp.array([delta])))
  # The integrand scaled by its maximum on [0, 1], so that nothing underflows.
  peak = min(alpha**2, (alpha + delta)**2) / 2 if alpha * (alpha + delta) > 0 else 0.0
  f = lambda z: np.exp(peak - (alpha + delta * z)**2 / 2)
  mode = min(max(-alpha / delta, 0.0), 1.0) if delta > 0 else 0.5
  quad = lambda g: integrate.quad(g, 0, 1, points=[mode], epsabs=0, epsrel=1e-13, limit=200)[0]
  z0, z1 = quad(f), quad(lambda z: z * f(z))
  assert abs(log_z - (np.log(z0) - peak)) < 1e-9 * max(1.0, peak)
  assert abs(ez - z1 / z0) < 1e-8
  assert abs(eu - (alpha + delta * z1 / z0)) < 1e-8 * (1 + abs(alpha))


def test_truncated_normal_float32_is_close_to_float64():
  """Float32 on a grid of intervals, including alpha near 13.2 where jax's float32 erfcx returns 0
  (its argument alpha / sqrt 2 in [9.195, 9.419]), against the same function in float64."""
  alpha = np.concatenate([np.linspace(-60, 60, 241), np.linspace(12.9, 13.5, 61)])
  delta = np.array([0.0, 1e-3, 0.3, 2.0, 20.0, 90.0])
  alpha, delta = (g.ravel() for g in np.meshgrid(alpha, delta))
  ours = [np.asarray(v, np.float64) for v in references._truncated_normal(
      jnp.asarray(alpha, jnp.float32), jnp.asarray(delta, jnp.float32))]
  with jax.enable_x64(True):
    exact = [np.asarray(v) for v in references._truncated_normal(jnp.asarray(alpha),
                                                                 jnp.asarray(delta))]
  assert all(np.all(np.isfinite(v)) for v in ours)
  np.testing.assert_allclose(ours[0], exact[0], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(ours[1], exact[1], atol=1e-5)
  np.testing.assert_allclose(ours[2], exact[2], atol=1e-5)


def _monte_carlo_velocity(x1, ip, t, x):
  """Self-normalised importance estimate of E[dI_t | I_t = x] with data samples x1 as proposal:
  weights N(x; beta x1, alpha^2 sigma0^2 I), dI = alpha' (x - beta x1) / alpha + beta' x1.
  Returns the estimate, its standard error per coordinate and the effective sample size."""
  a, b = float(ip.alpha(t)), float(ip.beta(t))
  da, db = float(ip.dalpha(t)), float(ip.dbeta(t))
  log_w = -np.sum((x - b * x1) ** 2, -1) / (2 * a**2 * ip.sigma0**2)
  w = np.exp(log_w - log_w.max())
  f = da * (x - b * x1) / a + db * x1
  est = w @ f / w.sum()
  se = np.sqrt((w**2) @ (f - est) ** 2) / w.sum()
  return est, se, w.sum() ** 2 / np.sum(w**2)


@pytest.mark.parametrize("name", ["checkerboard", "gaussian_mixture"])
def test_exact_velocity_matches_monte_carlo(name, x64):
  """b_t(x) against the importance estimate (within 5 standard errors) at points where the
  estimate has at least 300 effective samples, for both interpolants and two sigma0."""
  dataset = toy2d.get_toy_dataset(name)
  x1 = np.asarray(dataset.sample(jax.random.key(0), 200_000), np.float64)
  points = np.array([[0.3, -0.2], [-0.8, 0.9], [1.2, 0.1], [0.6, 0.8]])
  checked = 0
  for ip_name, sigma0 in INTERPOLANTS:
    ip = interpolants.get_interpolant(ip_name, sigma0)
    b = references.exact_velocity(dataset, ip)
    for t in (0.15, 0.5, 0.85):
      exact = np.asarray(b(jnp.full((len(points),), t), jnp.asarray(points)))
      for x, e in zip(points, exact):
        est, se, ess = _monte_carlo_velocity(x1, ip, t, x)
        if ess < 300:  # too few data samples near x for the estimate to mean anything
          continue
        checked += 1
        assert np.all(np.abs(e - est) < 5 * se + 1e-6), (ip_name, t, x, e, est, se)
  assert checked >= 18


def test_gaussian_flow_velocity_equals_one_component_mixture(x64):
  """A one-component mixture N((r, 0), std^2 I) is the Gaussian of `gaussian.py` (§7)."""
  mix = toy2d.GaussianMixture(num_components=1, radius=0.7, std=0.3)
  rng = np.random.default_rng(0)
  t = jnp.asarray(rng.uniform(size=64))
  x = jnp.asarray(rng.normal(size=(64, 2)))
  for ip_name, sigma0 in INTERPOLANTS:
    ip = interpolants.get_interpolant(ip_name, sigma0)
    gauss = GaussianFlow(ip, jnp.array([0.7, 0.0]), 0.09 * jnp.eye(2))
    np.testing.assert_allclose(np.asarray(references.exact_velocity(mix, ip)(t, x)),
                               np.asarray(gauss.velocity(t, x)), rtol=1e-10, atol=1e-12)


def test_box_velocity_at_the_endpoints(x64):
  """t = 0: I_0 = x0, so b_0(x) = alpha'_0 x + beta'_0 E[x1]. t = 1 (clamped to 1 - 1e-5): inside
  the box E[x0 | x] = 0 and E[x1 | x] = x, so b_1(x) = beta'_1 x; outside it the velocity points
  towards the box and stays finite, however far."""
  lows, highs = np.array([[0.2, -0.3]]), np.array([[0.7, 0.1]])  # one box, centre (0.45, -0.1)
  x = np.array([[0.3, -0.2], [0.6, 0.0], [2.0, -3.0], [-40.0, 0.5]])
  for ip_name, sigma0 in INTERPOLANTS:
    ip = interpolants.get_interpolant(ip_name, sigma0)
    b = references.boxes_velocity(lows, highs, ip)
    at_zero = np.asarray(b(jnp.zeros(4), jnp.asarray(x)))
    expected = float(ip.dalpha(0.0)) * x + float(ip.dbeta(0.0)) * np.array([0.45, -0.1])
    np.testing.assert_allclose(at_zero, expected, atol=1e-12)
    at_one = np.asarray(b(jnp.ones(4), jnp.asarray(x)))
    assert np.all(np.isfinite(at_one))
    np.testing.assert_array_equal(at_one, np.asarray(b(jnp.full(4, references.T_MAX),
                                                       jnp.asarray(x))))
    np.testing.assert_allclose(at_one[:2], float(ip.dbeta(references.T_MAX)) * x[:2], atol=1e-4)
    assert at_one[2, 0] < 0 and at_one[2, 1] > 0 and at_one[3, 0] > 0


def test_reference_flow_matches_the_gaussian_flow_map(x64):
  """The adaptive solve reproduces X_{s,t} of `gaussian.py` for forward, backward, s = t and
  s = 0 -> t = 1 pairs."""
  ip = interpolants.trigonometric(0.8)
  gauss = GaussianFlow(ip, jnp.array([0.5, -1.0]), jnp.array([[0.3, 0.1], [0.1, 0.6]]))
  flow = references.ReferenceFlow(gauss.velocity, rtol=1e-9, atol=1e-9)
  s = jnp.array([0.0, 0.0, 0.3, 0.9, 0.5, 1.0])
  t = jnp.array([1.0, 0.4, 0.8, 0.2, 0.5, 0.0])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)))
  np.testing.assert_allclose(np.asarray(flow.flow_map(s, t, x)),
                             np.asarray(gauss.flow_map(s, t, x)), atol=1e-7)
  np.testing.assert_array_equal(np.asarray(flow.flow_map(s, t, x))[4], np.asarray(x)[4])


def test_reference_map_pushes_noise_onto_the_checkerboard():
  """X_{0,1} of the exact velocity, float32 at the default tolerance: the samples land on the
  even cells and their KL is at the noise floor of exact data, while the noise itself is far."""
  dataset = toy2d.Checkerboard()
  ip = interpolants.linear(0.577)
  n = 3000
  x0 = 0.577 * jax.random.normal(jax.random.key(0), (n, 2))
  x1 = references.reference_flow(dataset, ip).flow_map(jnp.zeros(n), jnp.ones(n), x0)
  near = (jnp.abs(x1[:, None, :] - jnp.array([-1.0, -0.5, 0.0, 0.5, 1.0])[:, None]) < 1e-3)
  on_edge = jnp.any(near, axis=(1,))
  inside = dataset.in_support(x1) | jnp.any(on_edge, axis=-1)
  assert float(jnp.mean(inside)) == 1.0
  assert float(jnp.mean(dataset.in_support(x1))) > 0.99
  bins = 20  # 200 bins on the support, 15 samples each: floor about 0.04
  floors = [kl.kl_noise_floor(dataset, n, jax.random.key(k), bins) for k in (1, 2)]
  ours = kl.histogram_kl(x1, dataset, bins)
  assert ours < max(floors) + 0.02, (ours, floors)
  assert kl.histogram_kl(x0, dataset, bins) > max(floors) + 0.5
