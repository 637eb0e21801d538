"""Conditional runs sampled with the consistency sampler (`docs/method.md` §8, §9;
`docs/guidance.md`): the single-time map X_{t,1} at (label, w), then fresh noise back to the next
time of the grid. One step is X_{0,1}(x0), the flow map's one step; with the exact map of a
class the samples keep the class's law at any N; a conditional consistency distillation run
trains, evaluates per w and samples through the CLI; the image path names the sampler and its
one step is the flow map's; the refusals that remain are named errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import interpolants, sampling, train, validation
from flow_maps.data import toy2d
from flow_maps.evaluation import toy2d_eval
from flow_maps.evaluation.gaussian import GaussianFlow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ring_config(arg: str):
  """`configs/gaussian_mixture.py` with an argument (`config_defaults.parse_arg`)."""
  spec = importlib.util.spec_from_file_location("gaussian_mixture_config",
                                                os.path.join(ROOT, "configs",
                                                             "gaussian_mixture.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def exact_class_maps(dataset: toy2d.GaussianMixture, interpolant):
  """The exact conditional flow (w = 1) as labels [B] -> velocity field: row b's field is the
  closed-form flow of its label's component alone, N(mu_c, std^2 I) (`docs/method.md` §7)."""
  means = jnp.asarray(dataset.means)
  cov = dataset.std**2 * jnp.eye(2, dtype=means.dtype)

  def field(label):
    def v(s, t, x):
      one = lambda m, s, t, x: GaussianFlow(interpolant, m, cov).v(s[None], t[None], x[None])[0]
      return jax.vmap(one)(means[label], s, t, x)
    return v

  return field


def test_exact_class_maps_sampled_by_consistency_keep_the_class_law(x64):
  """With the exact single-time map of each class: one consistency step is X_{0,1}(x0) to
  round-off; two steps re-noise, so the samples move, yet the samples of class 3 still have its
  component's mean and covariance (Monte Carlo) and the exact samples' share nearest its mode.
  The flow map's two exact steps compose to its one step (a check of the stand-in)."""
  ds = toy2d.GaussianMixture(std=0.25)
  ip = interpolants.get_interpolant("linear", 0.75)
  field = exact_class_maps(ds, ip)
  n = 4000
  x0 = np.asarray(sampling.noise(jax.random.PRNGKey(5), n, (2,), ip.sigma0))
  labels = np.full(n, 3, np.int32)
  key = jax.random.PRNGKey(6)
  draw = lambda sampler, steps: toy2d_eval.map_samples(field, x0, steps, n, sampler, ip, key,
                                                       labels)
  ones = jnp.ones(n)
  exact = np.asarray(GaussianFlow(ip, jnp.asarray(ds.means[3]), ds.std**2 * jnp.eye(2))
                     .flow_map(0 * ones, ones, jnp.asarray(x0)))
  np.testing.assert_allclose(draw("consistency", 1), exact, atol=1e-10)
  np.testing.assert_allclose(draw("flow_map", 2), exact, atol=1e-10)
  two = draw("consistency", 2)
  assert float(np.mean(np.abs(two - exact))) > 0.05
  mean, cov = two.mean(0), np.cov(two.T)
  se = ds.std / np.sqrt(n)
  assert np.all(np.abs(mean - ds.means[3]) < 4.5 * se), (mean, ds.means[3])
  var_se = ds.std**2 * np.sqrt(2.0 / n)
  np.testing.assert_allclose(cov, ds.std**2 * np.eye(2), atol=5 * var_se)
  # The components overlap (std 0.25), so about 87 % of class 3's own data is nearest its mode.
  own = lambda x: float(np.mean(np.asarray(ds.label_of(jnp.asarray(x))) == 3))
  assert abs(own(two) - own(exact)) < 0.03 and own(two) > 0.8


@pytest.fixture(scope="module")
def conditional_mlp():
  """A guided (learned w) MLP of the labelled ring at its initialisation, bound as `bind`."""
  c = ring_config("preset=lsd,guidance=learned,variant=smoke")
  c.model.width, c.model.depth = 32, 2
  exp = train.build_experiment(c)
  params = train.init_state(exp).params
  return c, exp, lambda condition: exp.model.bind(params, condition=condition)


def test_consistency_is_the_flow_map_at_one_step_for_a_conditional_network(conditional_mlp):
  """At a guidance scale w != 1, every row at its own label: one consistency step equals one
  flow-map step (both are X_{0,1}); at N = 2 they differ, and consistency's samples are
  reproducible from the key, changed by another key, and those of `sampling.sample_consistency`
  on the whole batch (the chunk key fold_in(key, 0))."""
  c, exp, bind = conditional_mlp
  n = 300
  x0 = np.asarray(sampling.noise(jax.random.PRNGKey(1), n, (2,), exp.interpolant.sigma0))
  labels = sampling.sample_labels(8, -1, jax.random.PRNGKey(2), n)
  key = jax.random.PRNGKey(3)
  map_field, _ = sampling.guided_fields(bind, 8, learned=True)
  field = lambda c: map_field(c, jnp.full(c.shape, 2.5, jnp.float32))
  draw = lambda sampler, steps, k=key: toy2d_eval.map_samples(
      field, x0, steps, n, sampler, exp.interpolant, k, labels)
  np.testing.assert_allclose(draw("consistency", 1), draw("flow_map", 1), atol=1e-6)
  two = draw("consistency", 2)
  assert float(np.max(np.abs(two - draw("flow_map", 2)))) > 1e-2
  np.testing.assert_array_equal(two, draw("consistency", 2))
  assert float(np.max(np.abs(two - draw("consistency", 2, jax.random.PRNGKey(4))))) > 1e-2
  direct = sampling.sample_consistency(field(jnp.asarray(labels)), jnp.asarray(x0), 2,
                                       exp.interpolant, jax.random.fold_in(key, 0))
  np.testing.assert_allclose(two, np.asarray(direct), atol=1e-6)


@pytest.mark.parametrize("arg, overrides, message", [
    ("preset=consistency_training,guidance=fixed", {},
     "guidance.fixed_omega: MeanFlow's fixed guidance takes b(.|c) and b(.|null) from the "
     "network's own diagonal"),
    ("preset=consistency_training,guidance=learned", {},
     "guidance.learned: the guided velocity is built from the network's own diagonal"),
    ("preset=esd,guidance=learned", {"objective.times": "fixed_end",
                                     "objective.diagonal_fraction": 0.0,
                                     "eval.sampler": "consistency", "eval.ode_steps": ()},
     "guidance.learned: self-distilled guidance is learned on the diagonal rows"),
])
def test_what_a_conditional_single_time_map_cannot_do_is_a_named_error(arg, overrides, message):
  c = ring_config(arg + ",variant=smoke")
  for field, value in overrides.items():
    section, name = field.split(".")
    c[section][name] = value
  with pytest.raises(validation.ConfigError, match="^" + message.replace("(", r"\(")
                     .replace(")", r"\)").replace(".", r"\.").replace("|", r"\|")):
    validation.validate(c)


@pytest.mark.parametrize("arg", ["preset=consistency_training,guidance=labels",
                                 "preset=consistency_training_discrete,guidance=labels",
                                 "preset=lsd,guidance=learned"])
def test_conditional_runs_validate_with_the_consistency_sampler(arg):
  c = ring_config(arg + ",variant=smoke")
  c.eval.sampler = "consistency"
  validation.validate(c)


def test_conditional_consistency_distillation_through_the_cli(tmp_path):
  """A conditional flow-matching teacher (trained in-process, 20 steps) guides a consistency
  distillation student with learned guidance, run by the CLI: it trains, its evaluation has
  the consistency sampler's map rows at every w (and says so in the JSON and the table), and
  --mode=sample writes the files of a label and each w."""
  import importlib
  teacher_config = importlib.import_module(
      "configs.gaussian_mixture_flow_matching_guided").get_config("smoke")
  teacher = tmp_path / "teacher"
  train.train(teacher_config, str(teacher))
  student = tmp_path / "student"
  config_arg = (f"--config={ROOT}/configs/gaussian_mixture.py:preset=consistency_distillation,"
                "guidance=learned,variant=smoke")
  args = [sys.executable, "-m", "flow_maps.main", config_arg, f"--workdir={student}",
          "--mode=train_and_eval", f"--config.objective.pretrained={teacher}",
          "--config.eval.sampling_steps=(1,2)", "--config.eval.guidance=(0.0,4.0)",
          "--config.eval.num_samples=300", "--config.eval.batch_size=300"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "map sampler consistency" in r.stdout and "consistency 2" in r.stdout
  result = json.loads((student / "eval" / "step_20_ema_0.9_n300.json").read_text())
  assert result["sampler"] == "consistency" and result["learned_guidance"] is True
  for w in ("0", "4"):
    row = result["guidance"][w]
    assert set(row["flow_map_error"]) == {"1", "2"} and row["ode_flow_map_error"] == {}
    assert all(np.isfinite(v) for v in row["flow_map_error"].values())
  assert result["guidance"]["0"]["flow_map_error"] != result["guidance"]["4"]["flow_map_error"]

  from flow_maps.evaluation import run_eval
  c = ring_config("preset=consistency_distillation,guidance=learned,variant=smoke")
  c.objective.pretrained = str(teacher)
  c.sample.label, c.sample.sampling_steps, c.sample.guidance = 5, (1, 2), (0.0, 4.0)
  out = run_eval.sample(c, str(student))
  assert sorted(os.listdir(out)) == ["labels_5.npy"] + [f"n{n}_label_5_w{w}.npy"
                                                         for n in (1, 2) for w in (0, 4)]
  x = {name: np.load(os.path.join(out, name)) for name in os.listdir(out)}
  assert x["n2_label_5_w4.npy"].shape == (c.sample.num_samples, 2)
  assert np.all(np.isfinite(x["n2_label_5_w4.npy"]))
  assert float(np.max(np.abs(x["n1_label_5_w4.npy"] - x["n2_label_5_w4.npy"]))) > 1e-3


# --------------------------------------------------------------------------------- the image path


def _digits_config():
  """The smallest conditional image config of the suite (`tests/test_image_labels.py`)."""
  from flow_maps import config_defaults
  c = config_defaults.with_preset(config_defaults.digits("smoke"), "lsd")
  c.model.model_channels, c.model.channel_mult, c.model.attn_resolutions = 8, (1,), ()
  c.data.conditional, c.data.label_dropout = True, 0.25
  c.guidance.learned, c.guidance.fraction = True, 0.5
  c.eval.guidance, c.eval.sampling_steps, c.eval.ode_steps = (1.0, 3.0), (1, 2), ()
  c.eval.num_samples, c.eval.batch_size = 12, 6
  c.sample.guidance, c.sample.label, c.sample.num_samples, c.sample.sampling_steps = (2.5,), 7, 4, (1, 2)
  return c


def _closed_form(condition):
  """A conditional velocity field in closed form (label and w enter), for the image shapes."""
  def v(s, t, x):
    shift = (0.1 * condition.label * condition.guidance)[:, None, None, None]
    return -x + 0.5 * jnp.sin(3 * x + (s + 2 * t)[:, None, None, None]) + shift
  return v


def _stand_in_features(images):
  return np.asarray(images)[..., 0].mean(axis=2)  # [B, W]: mean pixel rows


def test_image_guided_eval_and_samples_with_the_consistency_sampler(tmp_path):
  """A conditional image config with eval.sampler='consistency' validates; its per-w FIDs name
  the sampler, equal the flow map's at N = 1 (the same samples) and differ at N = 2; its
  --mode=sample files likewise."""
  from flow_maps.evaluation import fid, image_eval
  config = _digits_config()
  exp = train.build_experiment(config)
  reference = str(tmp_path / "reference.npz")
  image_eval.reference_stats(config, reference, floor_count=12, features=_stand_in_features)
  results, samples = {}, {}
  for sampler in ("flow_map", "consistency"):
    c = config.copy_and_resolve_references()
    c.eval.sampler, c.eval.fid_stats = sampler, reference
    validation.validate(c)
    e = dataclasses.replace(exp, config=c)
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(fid, "check_weights", lambda path=None: "stand-in")
      patch.setattr(fid, "feature_fn", lambda *args, **kwargs: _stand_in_features)
      results[sampler] = image_eval.evaluate_guided(_closed_form, e, c,
                                                    key=jax.random.PRNGKey(0),
                                                    workdir=str(tmp_path))
    out = tmp_path / sampler
    out.mkdir()
    image_eval.write_guided_samples(_closed_form, e, c, str(out), key=jax.random.PRNGKey(1))
    samples[sampler] = {n: np.load(out / f"n{n}_label_7_w2.5.npz")["samples"] for n in (1, 2)}
  flow, cons = results["flow_map"], results["consistency"]
  assert cons["sampler"] == "consistency" and flow["sampler"] == "flow_map"
  assert "(consistency, 2 network calls)" in image_eval.format_guided_table(cons)
  for w in ("1", "3"):
    assert cons["guidance"][w]["fid"]["1"] == pytest.approx(flow["guidance"][w]["fid"]["1"],
                                                            rel=1e-5)
    assert abs(cons["guidance"][w]["fid"]["2"] - flow["guidance"][w]["fid"]["2"]) > 1e-4
  np.testing.assert_allclose(samples["consistency"][1], samples["flow_map"][1], atol=1e-5)
  assert float(np.max(np.abs(samples["consistency"][2] - samples["flow_map"][2]))) > 1e-3
