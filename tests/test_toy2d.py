"""The 2-D datasets: supports, weights, densities, determinism (`docs/method.md` §5-6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps.data import toy2d


def _binomial_ok(count, n, p, z=5.0):
  return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p))


def test_checkerboard_samples_fill_the_even_cells_uniformly():
  ds = toy2d.get_toy_dataset("checkerboard")
  n = 40_000
  x = np.asarray(ds.sample(jax.random.key(0), n))
  assert x.shape == (n, 2)
  ij = np.floor((x + 1.0) / 0.5).astype(int)
  assert np.all((ij >= 0) & (ij <= 3))
  assert np.all((ij.sum(-1) % 2) == 0), "a sample in an odd cell"
  assert bool(jnp.all(ds.in_support(x)))
  for i in range(4):
    for j in range(4):
      count = np.sum((ij[:, 0] == i) & (ij[:, 1] == j))
      if (i + j) % 2:
        assert count == 0
      else:
        assert _binomial_ok(count, n, 1 / 8), (i, j, count)
  # Uniform inside a cell: the offsets within the cell have mean 1/4 and variance 1/48.
  offset = x - (-1.0 + 0.5 * ij)
  np.testing.assert_allclose(offset.mean(0), 0.25, atol=5 * np.sqrt(1 / 48 / n))
  np.testing.assert_allclose(offset.var(0), 1 / 48, rtol=0.03)


def test_checkerboard_cells_are_the_even_ones():
  lows, highs = toy2d.Checkerboard().cells
  assert lows.shape == (8, 2)
  np.testing.assert_allclose(highs - lows, 0.5)
  ij = np.round((lows + 1.0) / 0.5).astype(int)
  assert sorted(map(tuple, ij)) == [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
  # The bottom-left cell [-1, -0.5)^2 is even; its right neighbour is not.
  assert bool(toy2d.Checkerboard().in_support(jnp.array([-0.75, -0.75])))
  assert not bool(toy2d.Checkerboard().in_support(jnp.array([-0.25, -0.75])))


def test_mixture_samples_have_the_component_weights_and_std():
  ds = toy2d.get_toy_dataset("gaussian_mixture", radius=1.2, std=0.08)
  n = 40_000
  x = np.asarray(ds.sample(jax.random.key(1), n))
  nearest = np.argmin(np.sum((x[:, None] - ds.means[None]) ** 2, -1), axis=1)
  for k in range(8):
    assert _binomial_ok(np.sum(nearest == k), n, 1 / 8)
  np.testing.assert_allclose(np.linalg.norm(ds.means, axis=-1), 1.2)
  residual = x - ds.means[nearest]
  np.testing.assert_allclose(residual.std(0), 0.08, rtol=0.03)


@pytest.mark.parametrize("name", ["checkerboard", "gaussian_mixture"])
def test_density_integrates_to_one(name):
  ds = toy2d.get_toy_dataset(name)
  (x_lo, x_hi), (y_lo, y_hi) = ds.domain
  m = 800  # midpoint rule; for the checkerboard the 800 cells align with the squares: exact
  xs = x_lo + (np.arange(m) + 0.5) * (x_hi - x_lo) / m
  ys = y_lo + (np.arange(m) + 0.5) * (y_hi - y_lo) / m
  grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1)
  p = np.asarray(ds.density(grid), np.float64)
  mass = p.sum() * (x_hi - x_lo) * (y_hi - y_lo) / m**2
  assert abs(mass - 1) < 1e-5
  assert np.all(p >= 0)


def test_density_matches_the_samples():
  """The mean of log p over samples is minus the entropy: for 8 well-separated components (7.7
  std apart) log(1/8) - log(2 pi e std^2). The checkerboard's log p is log(1/2) on its support."""
  ds = toy2d.get_toy_dataset("gaussian_mixture")
  x = ds.sample(jax.random.key(2), 20_000)
  log_p = np.asarray(ds.log_density(x))
  expected = np.log(1 / 8) - np.log(2 * np.pi * 0.1**2) - 1
  assert abs(log_p.mean() - expected) < 0.05
  cb = toy2d.get_toy_dataset("checkerboard")
  np.testing.assert_allclose(np.asarray(cb.log_density(cb.sample(jax.random.key(3), 100))),
                             np.log(0.5), rtol=1e-6)
  assert np.all(np.isneginf(np.asarray(cb.log_density(jnp.array([[-0.25, -0.75], [1.5, 0.0]])))))


@pytest.mark.parametrize("name", ["checkerboard", "gaussian_mixture"])
def test_sampling_is_seeded_and_jittable(name):
  ds = toy2d.get_toy_dataset(name)
  key = jax.random.key(5)
  a = ds.sample(key, 1000)
  b = jax.jit(ds.sample, static_argnums=1)(key, 1000)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  c = ds.sample(jax.random.key(6), 1000)
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_registry():
  assert isinstance(toy2d.get_toy_dataset("checkerboard"), toy2d.Checkerboard)
  ds = toy2d.get_toy_dataset("gaussian_mixture", num_components=3, radius=0.5, std=0.2)
  assert ds.means.shape == (3, 2) and ds.std == 0.2
  assert ds.domain == ((-1.5, 1.5), (-1.5, 1.5))
  with pytest.raises(ValueError, match="unknown toy dataset"):
    toy2d.get_toy_dataset("moons")
