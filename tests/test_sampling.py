"""Samplers (`docs/method.md` §2): the N-step flow map is exact with the exact map; Euler and Heun on
v_{t,t} converge at orders 1 and 2. Against the closed-form Gaussian flow (§7), in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import sampling


def _noise(gf, n, seed=0):
  x0 = gf.interpolant.sigma0 * np.random.default_rng(seed).normal(size=(n, gf.mean.shape[0]))
  return jnp.asarray(x0)


def _exact(gf, x0):
  n = x0.shape[0]
  return gf.flow_map(jnp.zeros(n), jnp.ones(n), x0)


@pytest.mark.parametrize("name", ["linear", "trigonometric"])
def test_flow_map_sampler_is_exact_with_the_exact_map(name, make_gaussian_flow, x64):
  gf = make_gaussian_flow(name, 0.7)
  x0 = _noise(gf, 64)
  expected = np.asarray(_exact(gf, x0))
  for steps in (1, 2, 3, 8, 16):
    np.testing.assert_allclose(np.asarray(sampling.sample_flow_map(gf.v, x0, steps)), expected,
                               rtol=1e-10, atol=1e-10)
  grid = jnp.array([0.0, 0.05, 0.3, 0.31, 0.8, 1.0])
  np.testing.assert_allclose(np.asarray(sampling.sample_flow_map_on_grid(gf.v, x0, grid)),
                             expected, rtol=1e-10, atol=1e-10)
  # A grid that stops early lands on the law of I_t there: X_{0, 0.5}.
  half = gf.flow_map(jnp.zeros(64), jnp.full(64, 0.5), x0)
  np.testing.assert_allclose(
      np.asarray(sampling.sample_flow_map_on_grid(gf.v, x0, jnp.array([0.0, 0.2, 0.5]))),
      np.asarray(half), rtol=1e-10, atol=1e-10)


def test_the_map_sampler_is_not_exact_with_a_wrong_map(make_gaussian_flow, x64):
  """The check above can fail: the velocity alone (v_{s,t} = b_s, i.e. Euler) is not the map."""
  gf = make_gaussian_flow("linear", 0.7)
  x0 = _noise(gf, 64)
  euler_map = lambda s, t, x: gf.velocity(s, x)
  error = np.abs(np.asarray(sampling.sample_flow_map(euler_map, x0, 4) - _exact(gf, x0))).max()
  assert error > 1e-2


@pytest.mark.parametrize("name", ["linear", "trigonometric"])
def test_ode_samplers_converge_at_their_orders(name, make_gaussian_flow, x64):
  """Halving the step divides Euler's error by 2 and Heun's by 4 (the velocity is v_{t,t})."""
  gf = make_gaussian_flow(name, 0.7)
  x0 = _noise(gf, 64)
  exact = _exact(gf, x0)

  def error(sampler, steps):
    return float(jnp.sqrt(jnp.mean(jnp.sum((sampler(gf.v, x0, steps) - exact) ** 2, -1))))

  for sampler, order in ((sampling.sample_euler, 1), (sampling.sample_heun, 2)):
    errors = [error(sampler, n) for n in (16, 32, 64)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(np.log2(ratios), order, atol=0.15)
  assert error(sampling.sample_heun, 64) < error(sampling.sample_euler, 64) / 10


def test_samplers_jit_with_static_steps(make_gaussian_flow):
  gf = make_gaussian_flow("linear", 0.7)
  x0 = jnp.asarray(_noise(gf, 32), jnp.float32)
  for sampler in (sampling.sample_flow_map, sampling.sample_euler, sampling.sample_heun):
    jitted = jax.jit(functools.partial(sampler, gf.v, steps=4))
    np.testing.assert_allclose(np.asarray(jitted(x0)), np.asarray(sampler(gf.v, x0, 4)),
                               rtol=1e-5, atol=1e-5)


def test_grid_and_noise():
  grid = sampling.uniform_grid(4)
  np.testing.assert_allclose(np.asarray(grid), [0.0, 0.25, 0.5, 0.75, 1.0])
  x0 = sampling.noise(jax.random.key(0), 20_000, (2,), 0.577)
  assert x0.shape == (20_000, 2)
  np.testing.assert_allclose(np.asarray(x0).std(0), 0.577, rtol=0.03)
