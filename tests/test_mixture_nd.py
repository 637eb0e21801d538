"""The d-dimensional Gaussian mixture (`data/mixture_nd.py`), its exact velocity and reference
map in d dimensions, the Lipschitz estimate, the W2 estimate and the evaluation
(`evaluation/mixture_eval.py`), its configs, sweep and figures (`docs/mixture_nd.md`)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import config_defaults, interpolants, validation
from flow_maps.data import mixture_nd
from flow_maps.evaluation import mixture_eval, references
from flow_maps.evaluation.gaussian import GaussianFlow

from conftest import gaussian_flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPOLANTS = [("linear", 1.0), ("trigonometric", 0.8)]


@pytest.mark.parametrize("k, d", [(1, 2), (2, 2), (3, 2), (4, 3), (5, 64)])
def test_simplex_means(k, d):
  """Every pair of means at the separation, centred at 0, the orientation set by the seed."""
  mu = mixture_nd.simplex(k, d, 1.7, seed=3)
  assert mu.shape == (k, d)
  distances = np.linalg.norm(mu[:, None] - mu[None], axis=-1)[~np.eye(k, dtype=bool)]
  np.testing.assert_allclose(distances, 1.7, rtol=1e-12)
  np.testing.assert_allclose(mu.mean(0), 0.0, atol=1e-12)
  if k > 1:
    assert not np.allclose(mu, mixture_nd.simplex(k, d, 1.7, seed=4))
  with pytest.raises(ValueError, match="needs dim >= 3"):
    mixture_nd.simplex(4, 2, 1.0, seed=0)


def test_samples_labels_and_density_in_d_dimensions():
  """Samples of shape [n, d] around their labelled component's mean with the component's std,
  and the log-density of the same mixture written out with scipy."""
  from scipy import stats
  m = mixture_nd.MixtureND(dim=16, num_components=4, separation=3.0, component_std=0.3)
  x, label = m.sample_labelled(jax.random.key(0), 4000)
  x, label = np.asarray(x), np.asarray(label)
  assert x.shape == (4000, 16) and set(label) == {0, 1, 2, 3}
  np.testing.assert_array_equal(np.asarray(m.sample(jax.random.key(0), 4000)), x)
  residual = x - m.means[label]
  assert abs(residual.std() - 0.3) < 0.01
  np.testing.assert_array_equal(np.asarray(m.label_of(x)), label)  # separation >> std
  expected = np.log(np.mean([stats.multivariate_normal(mu, 0.09).pdf(x[:5]) for mu in m.means],
                            axis=0))
  np.testing.assert_allclose(np.asarray(m.log_density(x[:5])), expected, rtol=1e-5)


@pytest.mark.parametrize("ip_name, sigma0", INTERPOLANTS)
def test_one_component_is_the_gaussian_in_d_dimensions(ip_name, sigma0, x64):
  """K = 1: the exact velocity is the Gaussian's of `gaussian.py`, and the reference map (one
  batched adaptive solve) its closed-form flow map, in 24 dimensions."""
  d = 24
  m = mixture_nd.MixtureND(dim=d, num_components=1, component_std=0.4)
  ip = interpolants.get_interpolant(ip_name, sigma0)
  gauss = GaussianFlow(ip, jnp.zeros(d), 0.16 * jnp.eye(d))
  rng = np.random.default_rng(0)
  t, x = jnp.asarray(rng.uniform(size=32)), jnp.asarray(rng.normal(size=(32, d)))
  np.testing.assert_allclose(np.asarray(references.exact_velocity(m, ip)(t, x)),
                             np.asarray(gauss.velocity(t, x)), rtol=1e-10, atol=1e-12)
  flow = references.ReferenceFlow(references.exact_velocity(m, ip), rtol=1e-9, atol=1e-9)
  s = jnp.asarray(rng.uniform(size=32))
  np.testing.assert_allclose(np.asarray(flow.flow_map(s, t, x)),
                             np.asarray(gauss.flow_map(s, t, x)), atol=1e-7)


def test_jacobian_norm_of_a_gaussian_velocity(x64):
  """A single Gaussian with a full covariance: grad b_t = Q diag(c'_t / (2 c_t)) Q^T, so the
  power iteration must return max_i |c'_i / (2 c_i)| per row, at every time (`docs/method.md`
  §7); a perturbed answer (the second singular value) must not pass."""
  for ip_name in ("linear", "trigonometric"):
    gauss = gaussian_flow(ip_name, sigma0=0.7, dim=6)
    t = jnp.linspace(0.0, 1.0, 11)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(11, 6)))
    norms = np.asarray(mixture_eval.jacobian_norms(gauss.velocity, t, x, jax.random.key(0),
                                                   iterations=200))
    rate = np.sort(np.abs(np.asarray(gauss._dc(t) / (2 * gauss._c(t)))), -1)  # [B, d]
    # Every row lies between the two largest rates (a Rayleigh quotient); where they are apart
    # (power iteration converges as (second / first)^(2k)), it is the largest.
    assert np.all((norms <= rate[:, -1] * (1 + 1e-9) + 1e-12)
                  & (norms >= rate[:, -2] * (1 - 1e-9) - 1e-12))
    apart = (rate[:, -2] < 0.98 * rate[:, -1]) & (rate[:, -1] > 1e-6)
    assert apart.sum() >= 4
    np.testing.assert_allclose(norms[apart], rate[apart, -1], rtol=1e-6)
    assert np.all(np.abs(norms[apart] - rate[apart, -2]) > 1e-3)


@pytest.mark.parametrize("ip_name, sigma0", INTERPOLANTS)
def test_lipschitz_closed_form_at_the_worst_point(ip_name, sigma0, x64):
  """On the bisector of two components the weights are 1/2 each, so grad b_t = g_t I +
  h_t (D^2 / 4) n n^T: its spectral norm is the closed form `lipschitz_in_time`. Checked against
  the dense Jacobian (jacfwd) and the power iteration, in 5 dimensions at several times."""
  m = mixture_nd.MixtureND(dim=5, num_components=2, separation=1.5, component_std=0.3)
  ip = interpolants.get_interpolant(ip_name, sigma0)
  b = references.exact_velocity(m, ip)
  t = jnp.asarray([0.0, 0.3, 0.7, 0.9, 0.95, 1.0])
  x = ip.beta(t)[:, None] * jnp.asarray(m.means).mean(0)  # beta_t (mu_1 + mu_2) / 2
  dense = jax.vmap(lambda ti, xi: jax.jacfwd(lambda y: b(ti[None], y[None])[0])(xi))(t, x)
  expected = m.lipschitz_in_time(ip, np.asarray(t))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(dense), 2, axis=(1, 2)), expected,
                             rtol=1e-9)
  power = mixture_eval.jacobian_norms(b, t, x, jax.random.key(1), iterations=100)
  np.testing.assert_allclose(np.asarray(power), expected, rtol=1e-6)
  # The sup over all x is attained there: random points never exceed it.
  xr = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)))
  random = mixture_eval.jacobian_norms(b, t, xr, jax.random.key(2), iterations=100)
  assert np.all(np.asarray(random) <= expected * (1 + 1e-9))


def test_lipschitz_grows_with_the_knob():
  """Lip(b) increases with the separation and with 1 / component_std, is the same in every
  dimension, and approaches 9 sigma0 D^2 / (64 sqrt 3 s^3) for narrow components."""
  ip = interpolants.linear(1.0)
  lip = lambda **kw: mixture_nd.MixtureND(**kw).lipschitz(ip)
  seps = [lip(separation=d, component_std=0.25) for d in (0.5, 1.0, 2.0, 4.0)]
  assert np.all(np.diff(seps) > 0)
  stds = [lip(separation=2.0, component_std=s) for s in (0.5, 0.25, 0.1)]
  assert np.all(np.diff(stds) > 0)
  assert lip(dim=2, separation=2.0) == lip(dim=128, separation=2.0)
  s, d = 0.01, 1.0
  assert abs(lip(separation=d, component_std=s) / (9 * d**2 / (64 * np.sqrt(3) * s**3)) - 1) < 0.05


def test_w2_known_answers():
  """W2 of a set to itself is 0 and to its translate by a is |a| (the identity assignment is
  optimal for a translation); a permuted copy is still at distance 0."""
  x = np.random.default_rng(0).normal(size=(300, 7))
  a = np.linspace(-1, 1, 7)
  assert mixture_eval.w2(x, x) == pytest.approx(0.0, abs=1e-6)
  assert mixture_eval.w2(x, x[::-1]) == pytest.approx(0.0, abs=1e-6)
  assert mixture_eval.w2(x, x + a) == pytest.approx(np.linalg.norm(a), rel=1e-9)


def test_evaluate_the_exact_map_is_exact():
  """The reference flow itself as the model: its N-step map has no flow-map error, its W2 sits at
  the floor, and its v_{t,t} has the exact velocity's Lipschitz estimate; the estimate stays
  below the closed-form sup over all x."""
  m = mixture_nd.MixtureND(dim=6, num_components=3, separation=2.0, component_std=0.3)
  ip = interpolants.linear(1.0)
  flow = references.reference_flow(m, ip)
  lipschitz = dict(lipschitz_times=6, lipschitz_samples=16, lipschitz_iterations=10)
  # The model's Lipschitz estimate differentiates v_{t,t} by jvp, which diffrax's solve (a
  # custom_vjp) does not admit: the reference flow is scored without it, and the model estimate
  # is checked below on a field whose diagonal is the exact velocity.
  result = mixture_eval.evaluate(flow.v, m, ip, key=jax.random.key(0), steps=(1, 2),
                                 ode_steps=(2,), num_samples=200, batch_size=200,
                                 lipschitz_model=False, **lipschitz)
  assert set(result["flow_map_error"]) == {"1", "2"}
  assert max(result["flow_map_error"].values()) < 1e-8
  assert result["ode_flow_map_error"]["2"] > 1e-3  # two Euler steps are not the map
  for n in ("1", "2"):
    assert abs(result["w2"][n] - result["w2_reference"]) < 1e-3
  assert 0 < result["w2_floor"] < 1.5
  lip = result["lipschitz"]
  assert "model" not in lip
  assert 1.0 <= lip["exact"] <= lip["sup_on_grid"] * (1 + 1e-5) <= lip["sup"] * (1 + 1e-5)
  assert "W2" in mixture_eval.format_table(result)
  b = references.exact_velocity(m, ip)
  diagonal = mixture_eval.evaluate(lambda s, t, x: b(t, x), m, ip, key=jax.random.key(0),
                                   steps=(1,), ode_steps=(), num_samples=200, batch_size=200,
                                   **lipschitz)["lipschitz"]
  assert diagonal["exact"] == lip["exact"]
  assert diagonal["model"] == pytest.approx(lip["exact"], rel=1e-4)


def _config(**data):
  c = config_defaults.with_preset(config_defaults.mixture_nd("smoke"), "lsd")
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.mark.parametrize("field, value, message", [
    ("dim", 1, "data.dim: must be >= 2"),
    ("component_std", 0.0, "data.component_std: must be > 0"),
    ("separation", -1.0, "data.separation: must be >= 0"),
    ("num_components", 6, "data.num_components: the means are a regular simplex"),
    ("conditional", True, "data.conditional: 'mixture_nd' carries no labels"),
])
def test_validation_names_the_field(field, value, message):
  validation.validate(_config())
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(_config(**{field: value}))


def test_config_overrides_reach_the_network(tmp_path):
  """--config.data.dim and the knob through the CLI: the run's data shape, and a bad value is a
  one-line error with exit code 2."""
  from flow_maps import data as data_lib
  c = _config(dim=32, separation=3.0)
  assert data_lib.data_shape(c) == (32,)
  assert data_lib.toy_dataset(c).lipschitz(interpolants.linear(1.0)) > 30
  proc = subprocess.run(
      [sys.executable, "-m", "flow_maps.main", "--config=configs/mixture_nd_lsd.py:smoke",
       f"--workdir={tmp_path}/run", "--mode=train", "--config.data.dim=1"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr
  assert "data.dim" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_members():
  """Every size expands to distinct members over objective x dim x separation x seed, each
  config file present."""
  from flow_maps import sweeps
  for arg, count in (("", 420), ("small", 8), ("smoke", 4)):
    members = sweeps.load_sweep(f"experiments/sweeps/mixture_nd.py:{arg}" if arg else
                                "experiments/sweeps/mixture_nd.py").expand()
    assert len(members) == count
    assert all(os.path.exists(m.config_path) for m in members)


def _fake_member(workdir, objective, dim, separation, seed, value):
  """A member's workdir as a finished run leaves it (status.json, config.json, an eval JSON)."""
  os.makedirs(os.path.join(workdir, "eval"))
  with open(os.path.join(workdir, "status.json"), "w") as f:
    json.dump({"state": "done", "returncode": 0}, f)
  residual = "diagonal" if objective == "flow_matching" else "lagrangian"
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": seed, "objective": {"residual": residual},
               "data": {"dim": dim, "separation": separation, "component_std": 0.25}}, f)
  steps = {str(n): value * dim / n for n in (1, 2, 4, 8, 16)}
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:  # two logged lines: the last counts
    for step in (2, 4):
      line = {"step": step, "diagonal": 1.0 + step}
      if residual != "diagonal":
        line[residual] = 0.01 * step
      f.write(json.dumps(line) + "\n")
  with open(os.path.join(workdir, "eval", "step_4.json"), "w") as f:
    json.dump({"step": 4, "params": "ema_0.9", "flow_map_error": steps, "w2": steps,
               "ode_flow_map_error": steps, "ode_w2": steps, "w2_floor": 0.1,
               "w2_reference": 0.1, "ode_sampler": "euler",
               "lipschitz": {"sup": 10.0 * separation, "sup_on_grid": 9.0 * separation,
                             "exact": 8.0 * separation, "model": 7.0 * separation}}, f)


def test_figures_from_sweep_results(tmp_path):
  """experiments/mixture_figures.py on a smoke sweep's workdirs (written as a finished run
  leaves them): a CSV row per cell with the numbers of its eval JSON, and the two PNGs."""
  from flow_maps import sweeps
  sweep = sweeps.load_sweep("experiments/sweeps/mixture_nd.py:smoke")
  root = str(tmp_path / "root")
  for m in sweep.expand():
    objective = "flow_matching" if "flow_matching" in m.config else "lsd"
    _fake_member(m.workdir(root), objective, m.overrides["data.dim"],
                 m.overrides["data.separation"], m.overrides["seed"], 0.5)
  os.remove(os.path.join(sweep.expand()[-1].workdir(root), "eval", "step_4.json"))
  proc = subprocess.run([sys.executable, "experiments/mixture_figures.py",
                         "experiments/sweeps/mixture_nd.py:smoke", f"--root={root}"],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert "not evaluated" in proc.stdout
  import csv
  with open(os.path.join(root, "mixture_nd.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3  # the member without an evaluation has no row
  lsd = [r for r in rows if r["objective"] == "lsd" and r["dim"] == "4"][0]
  assert float(lsd["error_1"]) == pytest.approx(2.0) and float(lsd["error_4"]) == pytest.approx(0.5)
  assert lsd["sampler"] == "map" and float(lsd["lipschitz_exact"]) == pytest.approx(16.0)
  assert float(lsd["loss_diagonal"]) == 5.0 and float(lsd["loss_off_diagonal"]) == 0.04
  fm = [r for r in rows if r["objective"] == "flow_matching"][0]
  assert fm["sampler"] == "euler" and fm["loss_off_diagonal"] == "nan"
  for name in ("mixture_nd_vs_dim.png", "mixture_nd_vs_lipschitz.png"):
    assert os.path.getsize(os.path.join(root, name)) > 1000


def test_best_checkpoint_of_a_mixture_run_is_by_flow_map_error(tmp_path):
  """Without KL or FID, the best checkpoint per N is the one of the lowest flow-map error."""
  from flow_maps.evaluation import results
  for step, errors in ((10, {"1": 0.5, "4": 0.1}), (20, {"1": 0.3, "4": 0.2})):
    with open(tmp_path / f"{results.stem(step, 'online', 2000)}.json", "w") as f:
      json.dump({"step": step, "params": "online", "flow_map_error": errors, "w2": errors}, f)
  best = results.best(results.scan(str(tmp_path)))
  assert best["metric"] == "flow_map_error" and len(best["groups"]) == 1
  assert best["groups"][0]["best"] == {"1": {"value": 0.3, "step": 20},
                                       "4": {"value": 0.1, "step": 10}}


@pytest.mark.slow
def test_smoke_sweep_member_then_figures(tmp_path):
  """One member of the smoke sweep through the sweep runner and the CLI (train, then the
  mixture evaluation), then the figures from its real eval JSON."""
  root = str(tmp_path / "root")
  sweep = "experiments/sweeps/mixture_nd.py:smoke"
  proc = subprocess.run([sys.executable, "experiments/sweep.py", sweep, f"--root={root}", "run",
                         "--index=1"], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  workdir = [os.path.join(root, d) for d in os.listdir(root) if d.startswith("1_")][0]
  from flow_maps.evaluation import results
  result = results.latest(os.path.join(workdir, "eval"))
  assert result["step"] == 4
  assert result["dim"] == 4 and set(result["flow_map_error"]) == {"1", "2"}
  assert result["lipschitz"]["exact"] <= result["lipschitz"]["sup_on_grid"] * (1 + 1e-5)
  proc = subprocess.run([sys.executable, "experiments/mixture_figures.py", sweep,
                         f"--root={root}", "--steps=1,2"], cwd=ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert os.path.exists(os.path.join(root, "mixture_nd_vs_lipschitz.png"))


def test_seeds_size_is_four_cells_of_five_objectives_seed_major():
  """The run of `docs/mixture_nd.md`: the chosen (d, separation) cells only, every objective,
  three seeds, seed 0 complete before seed 1 starts."""
  from flow_maps import sweeps
  members = sweeps.load_sweep("experiments/sweeps/mixture_nd.py:seeds").expand()
  assert len(members) == 60
  cells = {(m.overrides["data.dim"], m.overrides["data.separation"]) for m in members}
  assert cells == {(2, 1.0), (8, 1.0), (32, 1.0), (8, 4.0)}
  assert [m.overrides["seed"] for m in members] == [0] * 20 + [1] * 20 + [2] * 20
  assert {os.path.basename(m.config) for m in members} == {
      f"mixture_nd_{o}.py" for o in ("lsd", "esd", "psd_m", "psd_u", "flow_matching")}
