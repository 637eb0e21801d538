"""Labels and classifier-free guidance learned into the map (`docs/method.md` §9): the labelled
2-D data, the exact guided velocity against independent closed forms, the guided diagonal
residual against a per-row reference, the config errors, and a short training whose guided maps
approach the exact guided maps and whose class fraction rises with w."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import config_defaults, data as data_lib, flow_map as fm, interpolants
from flow_maps import objectives as obj
from flow_maps import train, validation
from flow_maps.data import toy2d
from flow_maps.evaluation import gaussian, references, run_eval, toy2d_eval

sg = jax.lax.stop_gradient


def guided_config(name="gaussian_mixture_lsd_guided", variant="smoke"):
  import importlib
  return importlib.import_module(f"configs.{name}").get_config(variant)


@pytest.mark.parametrize("dataset", [toy2d.Checkerboard(), toy2d.GaussianMixture(std=0.25)])
def test_labelled_draws_are_the_unlabelled_draws_with_their_class(dataset):
  key = jax.random.PRNGKey(5)
  x, label = dataset.sample_labelled(key, 4096)
  np.testing.assert_array_equal(np.asarray(x), np.asarray(dataset.sample(key, 4096)))
  counts = np.bincount(np.asarray(label), minlength=dataset.num_classes)
  assert counts.min() > 4096 / dataset.num_classes * 0.8  # every class is drawn, about evenly
  own = float(jnp.mean(dataset.label_of(x) == label))
  if isinstance(dataset, toy2d.Checkerboard):
    assert own == 1.0  # a cell's samples lie in that cell
  else:
    assert 0.8 < own < 1.0  # overlapping components: mostly, not always, nearest their mode


def test_exact_guided_velocity_against_closed_forms():
  """w = 1: one component's Gaussian velocity (the closed form of `docs/method.md` §7, written
  out here per row) and one cell's boxes velocity; w = 0 and the null label: the unconditional
  velocity; other w: the formula."""
  ip = interpolants.get_interpolant("linear", 0.75)
  key_t, key_x, key_l = jax.random.split(jax.random.PRNGKey(0), 3)
  n = 256
  t = jax.random.uniform(key_t, (n,), minval=0.0, maxval=0.99)
  x = 0.9 * jax.random.normal(key_x, (n, 2))
  ones = jnp.ones((n,))
  for dataset in (toy2d.GaussianMixture(std=0.25), toy2d.Checkerboard()):
    guided = references.guided_velocity(dataset, ip)
    b = references.exact_velocity(dataset, ip)(t, x)
    k = dataset.num_classes
    if isinstance(dataset, toy2d.GaussianMixture):
      label = jax.random.randint(key_l, (n,), 0, k)
      mu = jnp.asarray(dataset.means, jnp.float32)[label]
      a, be = ip.alpha(t)[:, None], ip.beta(t)[:, None]
      da, db = ip.dalpha(t)[:, None], ip.dbeta(t)[:, None]
      c = a**2 * ip.sigma0**2 + be**2 * dataset.std**2
      dc = 2 * a * da * ip.sigma0**2 + 2 * be * db * dataset.std**2
      expected = db * mu + dc / (2 * c) * (x - be * mu)
    else:  # two cells, each against the boxes velocity of that cell alone
      label = jnp.where(jnp.arange(n) % 2 == 0, 0, 5)
      lows, highs = dataset.cells
      per_cell = {c: references.boxes_velocity(lows[c:c + 1], highs[c:c + 1], ip)(t, x)
                  for c in (0, 5)}
      expected = jnp.where((label == 0)[:, None], per_cell[0], per_cell[5])
    b_c = guided(t, x, label, ones)
    np.testing.assert_allclose(b_c, expected, atol=2e-5)
    assert float(jnp.max(jnp.abs(b_c - b))) > 0.1  # the class matters
    np.testing.assert_allclose(guided(t, x, jnp.full((n,), k), 3 * ones), b, atol=1e-6)
    np.testing.assert_allclose(guided(t, x, label, 0 * ones), b, atol=1e-6)
    np.testing.assert_allclose(guided(t, x, label, 2.5 * ones), b + 2.5 * (b_c - b), atol=1e-5)


def test_guided_diagonal_residual_against_a_per_row_reference(x64):
  """Value and parameter gradient of the guided diagonal, as the loss assembles it (guided rows
  by `guided_residual`, flow-matching rows by `diagonal_residual`, merged), against a per-row
  reference: guided rows regress v_{t,t}(I_t; c, w) on sg[b(null) + w (b(c) - b(null))], b from
  the teacher at w = 1; the other rows are flow matching at (their dropped label, w = 1)."""
  from flow_maps.networks import mlp
  n, k = 24, 3
  module = mlp.MLP(out_dim=2, width=16, depth=2, sigma0=0.7, num_classes=k, learn_guidance=True)
  model = fm.FlowMapModel(module)
  keys = jax.random.split(jax.random.PRNGKey(1), 8)
  x0 = jax.random.normal(keys[0], (n, 2), jnp.float64)
  x1 = jax.random.normal(keys[1], (n, 2), jnp.float64)
  t = jax.random.uniform(keys[2], (n,), jnp.float64)
  labels = jax.random.randint(keys[3], (n,), 0, k)
  dropped = jnp.where(jax.random.uniform(keys[4], (n,)) < 0.3, k, labels)
  w = jax.random.uniform(keys[5], (n,), jnp.float64, 0.0, 4.0)
  guided = jnp.arange(n) % 2 == 0  # the guided layout of fraction 0.5: one row in two
  params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(keys[7], x0))
  teacher = jax.tree.map(lambda a: 1.1 * a, params)
  ip = interpolants.get_interpolant("linear", 0.7)

  layout = obj.Conditioning(num_classes=k, learned_guidance=True, guided_fraction=0.5).guided_layout
  assert np.array_equal(np.asarray(layout.is_diagonal(n)), np.asarray(guided))

  def ours(p):
    g, f = (lambda a: layout.split(a)[0]), (lambda a: layout.split(a)[1])
    m = n // 2
    one = jnp.ones((m,), jnp.float64)
    R_g = obj.guided_diagonal_residual(
        model.bind(p, condition=fm.Condition(g(labels), g(w))),
        model.bind(sg(teacher), condition=fm.Condition(g(labels), one)),
        model.bind(sg(teacher), condition=fm.Condition(jnp.full((m,), k), one)),
        g(w), g(t), g(x0), g(x1), ip)
    R_f = obj.diagonal_residual(model.bind(p, condition=fm.Condition(f(dropped), one)), f(t),
                                f(x0), f(x1), ip)
    return jnp.mean(layout.merge(R_g, R_f))

  def reference(p):
    """Per row (vmap-ed), both branches written out and the row's own chosen."""
    def net(params, s, x, c, g):
      return module.apply({"params": params}, s[None], s[None], x[None], label=c[None],
                          guidance=g[None])[0]

    def row(x0, x1, t, c, c_drop, w, g):
      x = (1 - t) * x0 + t * x1
      one = jnp.ones((), jnp.float64)
      b_c, b_null = net(teacher, t, x, c, one), net(teacher, t, x, jnp.asarray(k), one)
      guided_loss = jnp.sum((net(p, t, x, c, w) - sg(b_null + w * (b_c - b_null)))**2)
      flow_matching = jnp.sum((net(p, t, x, c_drop, one) - (x1 - x0))**2)
      return jnp.where(g, guided_loss, flow_matching)

    return jnp.mean(jax.vmap(row)(x0, x1, t, labels, dropped, w, guided))

  a, ga = jax.value_and_grad(ours)(params)
  b, gb = jax.value_and_grad(reference)(params)
  assert float(a) > 1e-3
  np.testing.assert_allclose(float(a), float(b), rtol=1e-12)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-14)


def test_label_dropout_and_guidance_draws():
  cond = obj.Conditioning(num_classes=8, label_dropout=0.25, learned_guidance=True, w_min=1.0,
                          w_max=3.0)
  labels = jnp.arange(20_000) % 8
  condition, w = cond.draw(jax.random.PRNGKey(0), labels, jnp.float32)
  null = np.asarray(condition.label == 8)
  assert abs(null.mean() - 0.25) < 0.02
  np.testing.assert_array_equal(np.asarray(condition.label)[~null], np.asarray(labels)[~null])
  assert np.all(np.asarray(condition.guidance)[null] == 1.0)
  assert 1.0 <= float(w.min()) and float(w.max()) <= 3.0 and abs(float(w.mean()) - 2.0) < 0.02


@pytest.mark.parametrize("change, message", [
    ({"data.name": "celeba64", "model.name": "mlp"}, "data.conditional: 'celeba64' carries no labels"),
    ({"data.conditional": False}, "guidance.learned: guidance needs labels"),
    ({"data.label_dropout": 0.0}, "data.label_dropout: guidance needs the unconditional model"),
    ({"data.label_dropout": 1.0}, "data.label_dropout: must be < 1"),
    ({"guidance.w_max": -1.0}, "guidance.w_max: must be >= 0.0"),
    ({"eval.guidance": (1.0, 7.0)}, "eval.guidance: [7.0] lie outside the trained range"),
    ({"sample.label": 8}, "sample.label: the data set has classes 0 to 7, got 8"),
    ({"eval.guidance": ()}, "eval.guidance: must be a non-empty tuple"),
    ({"guidance.fraction": 1.0}, "guidance.fraction: the diagonal needs guided rows and flow"),
    ({"guidance.fraction": 0.2, "train.batch_size": 24},
     "guidance.fraction: 0.2 of the 18 diagonal rows per device is not whole"),
    ({"guidance.learned": False, "sample.guidance": (2.0,)},
     "sample.guidance: without guidance.learned the map learns w = 1 only"),
    ({"guidance.learned": False, "data.conditional": False, "eval.label": 3},
     "eval.label: needs a conditional run"),
    ({"guidance.fixed_omega": 2.0}, "guidance.fixed_omega: a fixed scale and guidance.learned"),
    ({"guidance.learned": False, "guidance.fixed_omega": 2.0, "sample.guidance": (2.0,)},
     "guidance.fixed_omega: MeanFlow's fixed guidance changes the conditional-velocity target"),
    ({"guidance.fixed_kappa": 0.5}, "guidance.fixed_kappa: needs guidance.fixed_omega > 0"),
    ({"eval.sampler": "consistency"}, "data.conditional: conditional runs are evaluated and "
                                      "sampled with the flow map"),
    ({"objective.velocity": "pretrained", "objective.residual": "lagrangian",
      "objective.pretrained": "/runs/teacher", "guidance.learned": False},
     "data.conditional: distillation of a conditional teacher is not built yet"),
])
def test_conditioning_config_errors(change, message):
  c = guided_config()
  for field, value in change.items():
    section, name = field.split(".")
    c[section][name] = value
  with pytest.raises(validation.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
    validation.validate(c)


def test_guided_training_approaches_the_exact_guided_maps(tmp_path):
  """A few hundred steps of guided LSD on the overlapping ring: the map's error against the exact
  guided map falls from its initial value at every w, and the fraction of samples nearest their
  label's mode rises with w, for the map as for the guided ODE. Then --mode=sample names w and the
  label in its files."""
  c = guided_config("gaussian_mixture_lsd_guided", "smoke")
  c.model.width, c.model.depth = 128, 3
  c.train.num_steps, c.train.checkpoint_every, c.train.log_every = 600, 600, 200
  c.optim.learning_rate = 2e-3
  c.data.label_dropout = 0.3  # the null model trains on more rows: it is w = 0's target
  c.train.ema_decays, c.eval.params = (0.99,), "ema_0.99"
  exp = train.build_experiment(c)
  scales = (0.0, 1.0, 4.0)
  kwargs = dict(key=jax.random.PRNGKey(3), learned=True, scales=scales, steps=(1, 4),
                ode_steps=(), num_samples=3000, batch_size=3000, flow_map_error_samples=1000)
  dataset = data_lib.toy_dataset(c)

  def measure(state):
    params = exp.select_params(state, "ema_0.99")
    return toy2d_eval.evaluate_guided(lambda cond: exp.model.bind(params, condition=cond),
                                      dataset, exp.interpolant, **kwargs)["guidance"]

  before = measure(train.init_state(exp))
  state, _ = train.train(c, str(tmp_path), exp=exp)
  after = measure(state)
  for w in ("0", "1", "4"):
    for n in ("1", "4"):
      assert after[w]["flow_map_error"][n] < 0.5 * before[w]["flow_map_error"][n], (w, n)
  for n in ("1", "4"):
    fractions = [after[w]["class_fraction"][n] for w in ("0", "1", "4")]
    assert fractions[0] < fractions[1] < fractions[2], fractions
    assert fractions[2] > 0.9

  c.sample.label, c.sample.steps, c.sample.guidance = 2, (1,), (0.0, 4.0)
  out = run_eval.sample(c, str(tmp_path))
  assert sorted(os.listdir(out)) == ["labels_2.npy", "n1_label_2_w0.npy", "n1_label_2_w4.npy"]
  x4 = np.load(os.path.join(out, "n1_label_2_w4.npy"))
  assert float(np.mean(np.asarray(dataset.label_of(x4)) == 2)) > 0.9


def test_meanflow_fixed_guidance_target_has_the_guided_mean(x64):
  """MeanFlow's fixed guidance: with the teacher's diagonal exact (b(.|null) the mixture's, and
  b(.|c) already the guided b^W it converges to), the target omega dI + kappa b^W +
  (1 - omega - kappa) b(.|null) has conditional mean b^W(x|c), W = omega / (1 - kappa), over
  x1 | (I_t = x, c), which is Gaussian for one component: Monte Carlo within 4 standard errors;
  a wrong W fails."""
  ds = toy2d.GaussianMixture(std=0.25)
  ip = interpolants.get_interpolant("linear", 0.75)
  cond = obj.Conditioning(num_classes=8, fixed_omega=1.5, fixed_kappa=0.25)
  W = cond.map_scale
  assert W == 2.0
  guided = references.guided_velocity(ds, ip)
  n, draws = 16, 20_000
  key = jax.random.PRNGKey(11)
  kt, kx, kl, kz = jax.random.split(key, 4)
  t = jax.random.uniform(kt, (n,), jnp.float64, 0.1, 0.9)
  x = 0.9 * jax.random.normal(kx, (n, 2), jnp.float64)
  label = jax.random.randint(kl, (n,), 0, 8)
  mu = jnp.asarray(ds.means)[label]
  # x1 | I_t = x for I_t = (1 - t) x0 + t x1, x0 ~ N(0, sigma0^2), x1 ~ N(mu, std^2).
  a2 = ((1 - t) * ip.sigma0)**2
  var = 1.0 / (1.0 / ds.std**2 + t**2 / a2)
  mean = var[:, None] * (mu / ds.std**2 + (t / a2)[:, None] * x)
  x1 = mean[None] + jnp.sqrt(var)[None, :, None] * jax.random.normal(kz, (draws, n, 2),
                                                                     jnp.float64)
  dI = (x1 - x[None]) / (1 - t)[None, :, None]  # x1 - x0 with x0 = (x - t x1) / (1 - t)
  k = ds.num_classes
  b_null = lambda s, tt, xx: guided(tt, xx, jnp.full((n,), k), jnp.ones((n,)))
  b_W = lambda s, tt, xx: guided(tt, xx, label, jnp.full((n,), W))
  guide = cond.fixed_guide(b_W, b_null, jnp.zeros((n,), bool))
  targets = jax.vmap(lambda d: guide(t, x, d))(dI)
  mc, se = targets.mean(0), targets.std(0) / np.sqrt(draws)
  assert float(jnp.max(jnp.abs(mc - b_W(t, t, x)) / se)) < 4.5
  wrong = guided(t, x, label, jnp.full((n,), 1.5))
  assert float(jnp.max(jnp.abs(mc - wrong) / se)) > 10
  # A dropped label keeps the plain conditional velocity.
  dropped = cond.fixed_guide(b_W, b_null, jnp.ones((n,), bool))(t, x, dI[0])
  np.testing.assert_array_equal(np.asarray(dropped), np.asarray(dI[0]))


def test_meanflow_fixed_guidance_trains_and_evaluates_at_its_scale(tmp_path):
  """The fixed-guidance config trains a few steps, its map is evaluated at W = 2 only (the ODE
  at any w), and sampling at another w is a named config error."""
  c = guided_config("gaussian_mixture_meanflow_guided", "smoke")
  c.eval.guidance = (1.0, 2.0)
  exp = train.build_experiment(c)
  assert exp.conditioning.map_scale == 2.0
  state, _ = train.train(c, str(tmp_path), exp=exp)
  params = exp.select_params(state, c.eval.params)
  result = toy2d_eval.evaluate_guided(
      lambda cond: exp.model.bind(params, condition=cond), data_lib.toy_dataset(c),
      exp.interpolant, key=jax.random.PRNGKey(0), learned=False, scales=(1.0, 2.0),
      map_scale=2.0, steps=(1,), ode_steps=(2,), num_samples=500, batch_size=500,
      flow_map_error_samples=100)["guidance"]
  assert result["1"]["flow_map_error"] == {} and set(result["1"]["ode_flow_map_error"]) == {"2"}
  assert np.isfinite(result["2"]["flow_map_error"]["1"])
  c.sample.guidance = (1.0,)
  with pytest.raises(validation.ConfigError, match="sample.guidance: without guidance.learned "
                     "the map learns w = 2 only"):
    validation.validate(c)
