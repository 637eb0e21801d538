"""Interpolants I_t = alpha_t x0 + beta_t x1 (`docs/method.md` §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import interpolants

NAMES = ("linear", "trigonometric")


def _times():
  return jnp.linspace(0.0, 1.0, 101)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_autodiff_and_finite_differences(name, x64):
  """alpha', beta' as coded equal d/dt alpha, d/dt beta (§1)."""
  ip = interpolants.get_interpolant(name, 1.0)
  t = _times()
  for f, df in ((ip.alpha, ip.dalpha), (ip.beta, ip.dbeta)):
    autodiff = jax.vmap(jax.grad(f))(t)
    np.testing.assert_allclose(df(t), autodiff, rtol=0, atol=1e-14)
    eps = 1e-6
    central = (f(t + eps) - f(t - eps)) / (2 * eps)
    np.testing.assert_allclose(df(t), central, rtol=0, atol=1e-9)


def test_linear_and_trigonometric_coefficients(x64):
  """alpha = 1 - t, beta = t; alpha = cos(pi t / 2), beta = sin(pi t / 2) (§1)."""
  t = _times()
  lin = interpolants.linear()
  np.testing.assert_allclose(lin.alpha(t), 1.0 - t, atol=0)
  np.testing.assert_allclose(lin.beta(t), t, atol=0)
  trig = interpolants.trigonometric()
  np.testing.assert_allclose(trig.alpha(t), np.cos(np.pi * np.asarray(t) / 2), atol=1e-15)
  np.testing.assert_allclose(trig.beta(t), np.sin(np.pi * np.asarray(t) / 2), atol=1e-15)
  # The trigonometric interpolant preserves variance when sigma0^2 equals the data variance.
  np.testing.assert_allclose(trig.alpha(t)**2 + trig.beta(t)**2, 1.0, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_endpoints_are_noise_and_data(name, x64):
  """I_0 = x0 (noise), I_1 = x1 (data) (§1)."""
  ip = interpolants.get_interpolant(name, 0.5)
  k0, k1 = jax.random.split(jax.random.key(0))
  x0 = jax.random.normal(k0, (5, 3))
  x1 = jax.random.normal(k1, (5, 3)) + 2.0
  np.testing.assert_allclose(ip.interpolate(jnp.zeros(5), x0, x1), x0, rtol=0, atol=1e-15)
  np.testing.assert_allclose(ip.interpolate(jnp.ones(5), x0, x1), x1, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_time_derivative_is_derivative_of_interpolate(name, x64):
  """dI_t = alpha'_t x0 + beta'_t x1 is d/dt I_t, per sample, for image-shaped states (§1)."""
  ip = interpolants.get_interpolant(name, 0.5)
  k0, k1, kt = jax.random.split(jax.random.key(1), 3)
  x0 = jax.random.normal(k0, (6, 2, 3, 1))
  x1 = jax.random.normal(k1, (6, 2, 3, 1))
  t = jax.random.uniform(kt, (6,))
  _, jvp = jax.jvp(lambda t_: ip.interpolate(t_, x0, x1), (t,), (jnp.ones_like(t),))
  np.testing.assert_allclose(ip.time_derivative(t, x0, x1), jvp, rtol=0, atol=1e-14)
  eps = 1e-6
  central = (ip.interpolate(t + eps, x0, x1) - ip.interpolate(t - eps, x0, x1)) / (2 * eps)
  np.testing.assert_allclose(ip.time_derivative(t, x0, x1), central, rtol=0, atol=1e-8)
  if name == "linear":
    np.testing.assert_allclose(ip.time_derivative(t, x0, x1), x1 - x0, rtol=0, atol=0)


def test_each_sample_uses_its_own_time(x64):
  """Times [B] broadcast against states [B, ...] row by row."""
  ip = interpolants.trigonometric()
  x0 = jnp.arange(24.0).reshape(4, 2, 3)
  x1 = -jnp.ones((4, 2, 3))
  t = jnp.array([0.0, 0.3, 0.6, 1.0])
  out = ip.interpolate(t, x0, x1)
  for b in range(4):
    expected = ip.alpha(t[b]) * x0[b] + ip.beta(t[b]) * x1[b]
    np.testing.assert_allclose(out[b], expected, rtol=0, atol=1e-15)
  assert interpolants.per_sample(t, x0).shape == (4, 1, 1)


def test_sigma0_is_carried_and_does_not_rescale_the_path(x64):
  """sigma0 is a config value that scales the noise draw only (§1): alpha, beta and I_t given
  (x0, x1) do not depend on it."""
  for name in NAMES:
    ip_half = interpolants.get_interpolant(name, 0.5)
    ip_unit = interpolants.get_interpolant(name, 1.0)
    assert ip_half.sigma0 == 0.5 and ip_unit.sigma0 == 1.0
    assert ip_half.name == name
    x0, x1, t = jnp.ones((3, 2)), 2 * jnp.ones((3, 2)), jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(ip_half.interpolate(t, x0, x1), ip_unit.interpolate(t, x0, x1))
  assert interpolants.linear(0.577).sigma0 == 0.577


def test_unknown_interpolant_raises():
  with pytest.raises(ValueError, match="cosine"):
    interpolants.get_interpolant("cosine", 1.0)
