"""The histogram KL(data || model) and its noise floor (`docs/method.md` §6, `evaluation/kl.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps.data import toy2d
from flow_maps.evaluation import kl

CHECKERBOARD = toy2d.Checkerboard()
MIXTURE = toy2d.GaussianMixture()


def test_floor_of_exact_samples_matches_the_histogram_bias():
  """Exact samples: the KL is the histogram's sampling bias, about (bins on the support) / (2n),
  plus -log(1 - epsilon) for the pseudo-count's share epsilon = a B^2 / (n + a B^2)."""
  n, bins = 20_000, 40
  floor = kl.kl_noise_floor(CHECKERBOARD, n, jax.random.key(0), bins)
  support_bins = bins**2 // 2
  eps = kl.DEFAULT_PSEUDO_COUNT * bins**2 / (n + kl.DEFAULT_PSEUDO_COUNT * bins**2)
  predicted = (support_bins - 1) / (2 * n) - np.log(1 - eps)
  assert 0.8 * predicted < floor < 1.25 * predicted, (floor, predicted)
  # Seeded: the same key gives the same number, another key a nearby one.
  assert floor == kl.kl_noise_floor(CHECKERBOARD, n, jax.random.key(0), bins)
  other = kl.kl_noise_floor(CHECKERBOARD, n, jax.random.key(1), bins)
  assert other != floor and abs(other - floor) < 0.2 * floor


def test_wrong_distributions_are_far_above_the_floor():
  n, bins = 20_000, 40
  floor = kl.kl_noise_floor(CHECKERBOARD, n, jax.random.key(0), bins)
  x = CHECKERBOARD.sample(jax.random.key(2), n)
  # Shifted by one cell: all the mass on the odd cells (and some off the domain).
  shifted = kl.histogram_kl(x + jnp.array([0.5, 0.0]), CHECKERBOARD, bins)
  # A Gaussian with the checkerboard's mean and covariance.
  gaussian = kl.histogram_kl(0.577 * jax.random.normal(jax.random.key(3), (n, 2)), CHECKERBOARD,
                             bins)
  # Half the samples moved into the odd cells: about log 2 more.
  half = kl.histogram_kl(jnp.concatenate([x[: n // 2], x[n // 2:] + jnp.array([0.5, 0.0])]),
                         CHECKERBOARD, bins)
  assert shifted > floor + 3
  assert gaussian > floor + 0.5
  assert abs(half - floor - np.log(2)) < 0.1


def test_histogram_kl_estimates_a_known_kl():
  """Data: the 8-Gaussian ring with std 0.1; model: the same ring with std 0.12. The true
  KL(p || q) = E_p[log p - log q] by Monte Carlo; the histogram estimate is that plus the floor
  (the two biases roughly add)."""
  n, bins = 50_000, 60
  model = toy2d.GaussianMixture(std=0.12)
  x_p = MIXTURE.sample(jax.random.key(4), 200_000)
  true_kl = float(jnp.mean(MIXTURE.log_density(x_p) - model.log_density(x_p)))
  assert true_kl > 0.05
  estimate = kl.histogram_kl(model.sample(jax.random.key(5), n), MIXTURE, bins)
  floor = kl.kl_noise_floor(MIXTURE, n, jax.random.key(6), bins)
  assert abs(estimate - (true_kl + floor)) < 0.25 * true_kl, (estimate, true_kl, floor)


def test_samples_outside_the_domain_are_lost_mass():
  """Adding n samples far outside the domain halves q on every bin: KL grows by log 2 (up to the
  pseudo-count, which keeps its share)."""
  n, bins = 10_000, 30
  x = CHECKERBOARD.sample(jax.random.key(7), n)
  base = kl.histogram_kl(x, CHECKERBOARD, bins)
  lost = kl.histogram_kl(jnp.concatenate([x, jnp.full((n, 2), 5.0)]), CHECKERBOARD, bins)
  assert abs(lost - base - np.log(2)) < 0.02


def test_histogram_density_is_normalised():
  x = np.asarray(MIXTURE.sample(jax.random.key(8), 5_000))
  domain = MIXTURE.domain
  q = kl.histogram_density(x, domain, bins=50)
  area = np.prod([(hi - lo) / 50 for lo, hi in domain])
  inside = np.all((x > -1.5) & (x < 1.5), axis=1).mean()
  pseudo = kl.DEFAULT_PSEUDO_COUNT * 50**2
  expected = (inside * len(x) + pseudo) / (len(x) + pseudo)
  assert q.sum() * area == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dataset", [CHECKERBOARD, MIXTURE])
def test_quadrature_of_the_density(dataset):
  """The bin masses of p sum to 1 and int p log p is minus the entropy (checkerboard: log 1/2)."""
  mass, p_log_p = kl._density_integrals(dataset, dataset.domain, kl.DEFAULT_BINS,
                                        kl.DEFAULT_SUBGRID)
  assert abs(mass.sum() - 1) < 1e-6
  if dataset is CHECKERBOARD:
    assert p_log_p.sum() == pytest.approx(np.log(0.5), abs=1e-6)
  else:
    x = dataset.sample(jax.random.key(9), 200_000)
    assert p_log_p.sum() == pytest.approx(float(jnp.mean(dataset.log_density(x))), abs=0.01)


def test_edge_band_of_the_checkerboard_and_where_a_blur_costs():
  """support_edge_bins: the outer ring of bins of every cell (25 x 25 bins a cell at B = 100)
  holds 1 - (23 / 25)^2 of the mass, three rings 1 - (19 / 25)^2; the per-bin terms sum to histogram_kl; blurring exact
  samples across the cell edges raises the edge band's part of the KL, not the interior's."""
  mass = kl.bin_mass(CHECKERBOARD)
  band = kl.support_edge_bins(CHECKERBOARD, 1)
  np.testing.assert_allclose(mass[band].sum(), 1 - (23 / 25) ** 2, rtol=1e-6)
  assert not np.any(band & (mass <= 0))
  wide = kl.support_edge_bins(CHECKERBOARD, 3)  # 3 bins = 0.06, twice the blur's std
  np.testing.assert_allclose(mass[wide].sum(), 1 - (19 / 25) ** 2, rtol=1e-6)
  x = CHECKERBOARD.sample(jax.random.key(0), 100_000)
  blurred = x + 0.03 * jax.random.normal(jax.random.key(1), x.shape)
  exact_terms = kl.histogram_kl_per_bin(x, CHECKERBOARD)
  blur_terms = kl.histogram_kl_per_bin(blurred, CHECKERBOARD)
  assert blur_terms.sum() == pytest.approx(kl.histogram_kl(blurred, CHECKERBOARD), rel=1e-12)
  assert blur_terms[wide].sum() > exact_terms[wide].sum() + 0.1
  assert abs(blur_terms[~wide].sum() - exact_terms[~wide].sum()) < 0.01


def test_kl_edges_script_reads_a_runs_samples(tmp_path, capsys):
  """experiments/kl_edges.py on a workdir with samples: one row per N and the data floor; the
  blurred 'one-step' samples have the larger edge-band part; a directory that is no run, or has
  no samples, is refused by name."""
  import importlib.util
  import json
  import os

  from flow_maps import config_defaults, workdir as workdir_lib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "kl_edges", os.path.join(root, "experiments", "kl_edges.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.main([str(tmp_path)]) == 2
  assert "no config.json" in capsys.readouterr().err
  with open(tmp_path / workdir_lib.CONFIG_FILE, "w") as f:
    json.dump(workdir_lib.config_as_json(config_defaults.checkerboard("smoke")), f)
  assert script.main([str(tmp_path)]) == 2
  assert "--mode=sample" in capsys.readouterr().err
  out = tmp_path / "samples" / "step_20_ema_0.9_n20000"
  out.mkdir(parents=True)
  x = np.asarray(CHECKERBOARD.sample(jax.random.key(0), 20_000))
  np.save(out / "n16.npy", x)
  np.save(out / "n1.npy", x + 0.03 * np.asarray(jax.random.normal(jax.random.key(1), x.shape)))
  assert script.main([str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[2:]}
  assert list(rows) == ["1", "16", "data"]
  assert rows["1"][1] > rows["16"][1] + 0.05  # the edge band
  assert rows["1"][3] > 0.02 and rows["16"][3] == 0.0  # mass off the support
  for kl_total, band, interior, _ in rows.values():
    assert kl_total == pytest.approx(band + interior, abs=2e-4)
