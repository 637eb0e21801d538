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


# Guided distillation cases: (preset, student, teacher, teacher's scale W). student: "guided"
# (label and w), "labels" (a label, no w), "none" (unconditional); teacher: "guided" (it takes w,
# and is called at w = 1) or "labels".
DISTILLATION_CASES = [("lmd", "guided", "guided", 1.0), ("emd", "guided", "labels", 1.0),
                      ("pmd", "labels", "labels", 2.0), ("lmd", "none", "guided", 1.0)]


@pytest.mark.parametrize("preset, student, teacher_kind, scale", DISTILLATION_CASES)
def test_guided_distillation_loss_against_a_per_row_reference(preset, student, teacher_kind,
                                                              scale, make_numpy_params, x64):
  """The whole loss of distillation from a conditional teacher (`objectives.loss` with a
  `GuidedTeacher`), value and parameter gradient, against a per-row reference written from the
  formula: every teacher slot takes b^w = b(.|null) + (w / W) (b(.|c) - b(.|null)) of the frozen
  teacher at w = 1, at the row's label (null where dropped) and w (1 without one); an
  unconditional student takes b(.|null). Diagonal rows regress v_{t,t}(I_t) on sg b^w(I_t); LMD
  rows |d/dt X - sg b^w_t(sg X)|^2, EMD rows |d/ds X + sg(grad_x X . b^w_s(x))|^2, PMD rows the
  student's own two-step target at its (label, w). The draws (noise, times, dropped labels, w)
  are the loss's own, from the same keys."""
  from flow_maps.networks import mlp
  n, k, dim = 32, 3, 2
  conditional, learned = student != "none", student == "guided"
  net_s = mlp.MLP(out_dim=dim, width=16, depth=2, sigma0=0.7, num_classes=k if conditional else 0,
                  learn_guidance=learned)
  net_t = mlp.MLP(out_dim=dim, width=16, depth=2, sigma0=0.7, num_classes=k,
                  learn_guidance=teacher_kind == "guided")
  model, teacher_model = fm.FlowMapModel(net_s), fm.FlowMapModel(net_t)
  # Inputs drawn in numpy: every eager jax op here would be one more compile.
  rng = np.random.default_rng(2)
  x1 = jnp.asarray(rng.normal(size=(n, dim)) + 0.5)
  labels = jnp.asarray(rng.integers(0, k, n))
  params = jax.tree.map(jnp.asarray, make_numpy_params(net_s, dim, 0))
  frozen = jax.tree.map(jnp.asarray, make_numpy_params(net_t, dim, 1))
  c = config_defaults.with_preset(config_defaults.gaussian_mixture("smoke"), preset)
  c.objective.diagonal_fraction = 0.5
  objective = obj.from_config(c.objective)
  ip = interpolants.get_interpolant("linear", 0.7)
  conditioning = obj.Conditioning(num_classes=k, label_dropout=0.3, learned_guidance=learned,
                                  w_min=0.0, w_max=4.0) if conditional else None
  key = jax.random.PRNGKey(7)
  extra = dict(labels=labels, conditioning=conditioning) if conditional else {}

  def ours(p):
    return obj.loss(model, p, x1, key, objective=objective, interpolant=ip,
                    pretrained=obj.GuidedTeacher(teacher_model, frozen, scale), train=False,
                    **extra)[0]

  @jax.jit
  def draws():
    """The loss's draws, from its keys: noise, diagonal and off-diagonal times, conditions."""
    key_noise, key_diag, key_off, _ = jax.random.split(key, 4)
    x0 = 0.7 * jax.random.normal(key_noise, x1.shape, jnp.float64)
    n_diag, n_off = objective.layout.counts(n)
    t_d = objective.times.diagonal(key_diag, n_diag, jnp.float64)
    off = objective.times.off_diagonal(key_off, n_off, ip, dtype=jnp.float64)
    if not conditional:
      return x0, t_d, off, jnp.full((n,), k), jnp.ones((n,), jnp.float64)
    condition, _ = conditioning.draw(jax.random.fold_in(key, 0xC1A55), labels, jnp.float64)
    w = condition.guidance if learned else jnp.ones((n,), jnp.float64)
    return x0, t_d, off, condition.label, w

  x0, t_d, off, label, w = jax.device_get(draws())
  if conditional:
    assert 0 < np.sum(label == k) < n  # some rows dropped, some kept
  diag = np.asarray(objective.layout.is_diagonal(n))
  s, t, h = np.zeros(n), np.zeros(n), np.zeros(n)
  s[diag], t[diag] = t_d, t_d
  s[~diag], t[~diag], h[~diag] = off.s, off.t, off.h
  assert np.all(t[~diag] > s[~diag])

  def reference(p):
    def v(s, t, x, c, g):  # the student, one row
      kwargs = {}
      if conditional:
        kwargs["label"] = c[None]
      if learned:
        kwargs["guidance"] = g[None]
      return net_s.apply({"params": p}, s[None], t[None], x[None], **kwargs)[0]

    def b(t, x, c, g):  # the teacher's guided velocity at (c, g), called at w = 1
      def call(label):
        kwargs = {"guidance": jnp.ones((1,))} if teacher_kind == "guided" else {}
        return net_t.apply({"params": frozen}, t[None], t[None], x[None], label=label[None],
                           **kwargs)[0]
      b_null = call(jnp.asarray(k))
      return b_null + (g / scale) * (call(c) - b_null)

    def X(s, t, x, c, g):
      return x + (t - s) * v(s, t, x, c, g)

    def row(x0, x1, s, t, h, c, g, is_diag):
      x = (1 - s) * x0 + s * x1
      diagonal = jnp.sum((v(s, s, x, c, g) - sg(b(s, x, c, g)))**2)
      if preset == "lmd":
        Xt, dX_dt = jax.jvp(lambda t_: X(s, t_, x, c, g), (t,), (jnp.ones(()),))
        off = jnp.sum((dX_dt - sg(b(t, sg(Xt), c, g)))**2)
      elif preset == "emd":
        dX_ds = jax.jvp(lambda s_: X(s_, t, x, c, g), (s,), (jnp.ones(()),))[1]
        spatial = jax.jvp(lambda x_: X(s, t, x_, c, g), (x,), (sg(b(s, x, c, g)),))[1]
        off = jnp.sum((dX_ds + sg(spatial))**2)
      else:  # pmd: the student's own map at its (label, w) composes the target
        u = h * s + (1 - h) * t
        X_su = x + (u - s) * sg(v(s, u, x, c, g))
        target = sg((1 - h) * v(s, u, x, c, g) + h * v(u, t, X_su, c, g))
        off = jnp.sum((v(s, t, x, c, g) - target)**2)
      return jnp.where(is_diag, diagonal, off)

    return jnp.mean(jax.vmap(row)(x0, x1, s, t, h, label, w, diag))

  a, ga = jax.jit(jax.value_and_grad(ours))(params)
  r, gr = jax.jit(jax.value_and_grad(reference))(params)
  assert float(a) > 1e-3
  np.testing.assert_allclose(float(a), float(r), rtol=1e-11)
  scale_g = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(gr))
  assert scale_g > 1e-6
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gr)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-10 * scale_g)


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
    ({"objective.velocity": "pretrained", "objective.residual": "lagrangian",
      "objective.pretrained": "/runs/teacher", "guidance.fraction": 0.25},
     "guidance.fraction: distillation regresses every diagonal row on the teacher's guided"),
    ({"objective.velocity": "conditional", "objective.residual": "eulerian"},
     "guidance.learned: the guided velocity is built from the network's own diagonal"),
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

  c.sample.label, c.sample.sampling_steps, c.sample.guidance = 2, (1,), (0.0, 4.0)
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
