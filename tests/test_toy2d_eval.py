"""The 2-D evaluation: KL per step count, error against the reference map, table, figure."""

import jax
import numpy as np

from flow_maps import interpolants
from flow_maps.data import toy2d
from flow_maps.evaluation import kl, references, toy2d_eval


def test_evaluate_an_euler_map_of_the_exact_velocity(tmp_path):
  """The "model" v_{s,t}(x) = b_s(x) makes the N-step map Euler's method on the exact velocity:
  its squared error against the reference map falls by about 4 per halving of the step (order 1),
  its KL falls towards the floor, and Heun on v_{t,t} = b_t is at the floor."""
  dataset = toy2d.GaussianMixture()
  ip = interpolants.linear(0.577)
  b = references.exact_velocity(dataset, ip)
  euler_map = lambda s, t, x: b(s, x)
  key = jax.random.key(0)
  result = toy2d_eval.evaluate(euler_map, dataset, ip, key=key, steps=(2, 4, 8),
                               ode_steps=(4, 32), num_samples=4000, batch_size=3000, bins=30,
                               flow_map_error_samples=1000)
  assert set(result["kl"]) == set(result["flow_map_error"]) == {"2", "4", "8"}
  assert set(result["ode_kl"]) == {"4", "32"}
  assert result["num_samples"] == 4000 and result["flow_map_error_samples"] == 1000
  error = result["flow_map_error"]
  assert error["2"] > error["4"] > error["8"]
  assert 2.5 < error["4"] / error["8"] < 6
  floor = result["kl_noise_floor"]
  assert floor == kl.kl_noise_floor(dataset, 4000, jax.random.split(key)[1], 30)
  assert result["kl"]["2"] > result["kl"]["8"]
  assert result["kl"]["2"] > floor + 0.1
  assert abs(result["ode_kl"]["32"] - floor) < 0.05
  assert result["ode_kl"]["4"] > result["ode_kl"]["32"]

  table = toy2d_eval.format_table(result).splitlines()
  assert len(table) == 2 + 3 + 2
  assert table[2].split()[:3] == ["map", "2", f"{result['kl']['2']:.4f}"]
  assert table[-1].split()[:3] == ["heun", "32", f"{result['ode_kl']['32']:.4f}"]

  samples = toy2d_eval.figure_samples(euler_map, dataset, ip, key=key, steps=(1, 2),
                                      num_samples=500)
  assert sorted(samples) == [1, 2] and samples[1].shape == (500, 2)
  path = tmp_path / "samples.png"
  toy2d_eval.plot_samples(samples, np.asarray(dataset.sample(key, 500)), str(path),
                          domain=dataset.domain, title="test")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reference_samples_are_cached_by_content(tmp_path, monkeypatch):
  """The second solve of the same (dataset, interpolant, x0) is read from the cache, bitwise;
  another x0 or another dataset is solved anew."""
  monkeypatch.setenv("FLOW_MAPS_CACHE", str(tmp_path))
  dataset = toy2d.GaussianMixture()
  ip = interpolants.linear(0.577)
  x0 = np.asarray(0.577 * np.random.default_rng(0).normal(size=(64, 2)), np.float32)
  first = toy2d_eval.reference_samples(dataset, ip, x0, 64)
  assert len(list((tmp_path / "reference_maps").iterdir())) == 1

  def no_solve(*args, **kwargs):
    raise AssertionError("solved again")

  with monkeypatch.context() as m:
    m.setattr(toy2d_eval, "_batched", no_solve)
    np.testing.assert_array_equal(toy2d_eval.reference_samples(dataset, ip, x0, 64), first)
  other = toy2d_eval.reference_samples(toy2d.GaussianMixture(std=0.2), ip, x0, 64)
  assert not np.array_equal(other, first)
  toy2d_eval.reference_samples(dataset, ip, x0 + 0.01, 64)
  assert len(list((tmp_path / "reference_maps").iterdir())) == 3
