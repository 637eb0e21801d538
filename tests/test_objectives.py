"""Residuals, stop-gradient placements, weighting and the batch loss (`docs/method.md` §3-4), against
the closed-form Gaussian flow of §7 in float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import flow_map as fm
from flow_maps import interpolants
from flow_maps import objectives as obj
from flow_maps import times
from flow_maps.evaluation.gaussian import GaussianFlow

NAMES = ("linear", "trigonometric")
SIGMA0 = 0.7
PLACEMENTS = ("teacher", "full", "none")


def _default(a):
  return jnp.asarray(a, jnp.zeros(()).dtype)


def _pairs(gf: GaussianFlow, n: int, seed: int):
  """(x0, x1): noise N(0, sigma0^2 I) and Gaussian data, drawn in numpy."""
  rng = np.random.default_rng(seed)
  dim = gf.mean.shape[0]
  x0 = gf.interpolant.sigma0 * rng.normal(size=(n, dim))
  x1 = np.asarray(gf.mean) + rng.normal(size=(n, dim)) @ np.linalg.cholesky(np.asarray(gf.cov)).T
  return _default(x0), _default(x1)


def _off_diagonal_residuals(v, v_teacher, s, t, h, x, placements=None):
  """Every off-diagonal residual of §3: name -> R [B]. By default each family under its
  published placement; `placements` lists others to evaluate every family under."""
  out = {}
  for placement in placements or (None,):
    suffix = f"/{placement}" if placement else ""
    out["lsd" + suffix] = obj.lagrangian_residual(v, v_teacher, s, t, x, placement or "teacher")
    out["esd" + suffix] = obj.eulerian_residual(v, v_teacher, s, t, x, placement or "full")
    out["psd-u" + suffix] = obj.progressive_residual(v, v_teacher, s, t, h, x,
                                                     placement or "teacher")
    out["psd-m" + suffix] = obj.progressive_residual(v, v_teacher, s, t, 0.5 * jnp.ones_like(h),
                                                     x, placement or "teacher")
  return out


# --- (a) residuals vanish at the flow map and only there ----------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_off_diagonal_residuals_vanish_for_exact_map(name, make_gaussian_flow, make_times_below,
                                                     x64):
  """LSD, ESD, PSD-M, PSD-U are zero to round-off when the network is the exact v (§7), and
  clearly positive when it is perturbed: scaled by 1.05, or moved off the diagonal only (the
  velocity b = v_{t,t} left exact)."""
  gf = make_gaussian_flow(name, SIGMA0)
  n = 256
  s, t = make_times_below(0, n)
  h = _default(np.random.default_rng(1).uniform(size=n))
  x0, x1 = _pairs(gf, n, 2)
  Is = gf.interpolant.interpolate(s, x0, x1)

  @jax.jit
  def residuals(scale, bump):
    def v(s_, t_, x_):  # the exact field, scaled, plus (t - s) g(s, t, x)
      g = jnp.sin(x_ + fm.per_sample(s_ + 2 * t_, x_))
      return scale * gf.v(s_, t_, x_) + bump * fm.per_sample(t_ - s_, x_) * g
    return _off_diagonal_residuals(v, v, s, t, h, Is)

  for key, R in residuals(1.0, 0.0).items():
    assert R.shape == (n,)
    assert jnp.max(R) < 1e-22, key  # measured: below 5e-27
  for scale, bump in ((1.05, 0.0), (1.0, 0.2)):
    for key, R in residuals(scale, bump).items():
      assert jnp.mean(R) > 1e-6, (scale, bump, key)  # measured: 2e-5 to 5e-2


def test_stop_gradient_placement_does_not_change_residual_values(make_gaussian_flow,
                                                                 make_times_below, make_mlp_model,
                                                                 x64):
  """sg only changes gradients, never the value of R (§3)."""
  gf = make_gaussian_flow("trigonometric", SIGMA0)
  model, params = make_mlp_model(sigma0=SIGMA0)
  v = model.bind(params)
  s, t = make_times_below(3, 32)
  h = _default(np.random.default_rng(4).uniform(size=32))
  x0, x1 = _pairs(gf, 32, 5)
  R = jax.jit(lambda s, t, h, x: _off_diagonal_residuals(v, v, s, t, h, x, PLACEMENTS))(
      s, t, h, gf.interpolant.interpolate(s, x0, x1))
  for family in ("lsd", "esd", "psd-u", "psd-m"):
    assert jnp.min(R[f"{family}/teacher"]) > 0
    for placement in ("full", "none"):
      np.testing.assert_allclose(R[f"{family}/{placement}"], R[f"{family}/teacher"], rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_diagonal_residual_mean_is_the_conditional_variance(name, make_gaussian_flow, x64):
  """With the exact velocity, E|b_t(I_t) - dI_t|^2 = trace Cov(dI_t | I_t)
  = sum_i sigma0^2 lambda_i (alpha'_t beta_t - alpha_t beta'_t)^2 / c_t,i (§1, §7), within 5 Monte
  Carlo standard errors. A perturbed velocity v pays E|v - b|^2 on top (b is flow matching's
  minimiser), checked on paired samples."""
  gf = make_gaussian_flow(name, SIGMA0)
  ip = gf.interpolant
  lam = np.linalg.eigvalsh(np.asarray(gf.cov))
  n = 50_000
  x0, x1 = _pairs(gf, n, 6)

  @jax.jit
  def residuals(t):
    wrong = lambda s_, t_, x_: 1.05 * gf.v(s_, t_, x_) + 0.1 * jnp.cos(x_)
    It = ip.interpolate(t, x0, x1)
    return (obj.diagonal_residual(gf.v, t, x0, x1, ip), obj.diagonal_residual(wrong, t, x0, x1, ip),
            obj.squared_norm(wrong(t, t, It) - gf.velocity(t, It)))

  for t_value in (0.0, 0.3, 0.8):
    a, b, da, db = (float(f(t_value)) for f in (ip.alpha, ip.beta, ip.dalpha, ip.dbeta))
    analytic = np.sum(SIGMA0**2 * lam * (da * b - a * db)**2 / (a**2 * SIGMA0**2 + b**2 * lam))
    R, R_wrong, excess = map(np.asarray, residuals(jnp.full((n,), t_value)))
    standard_error = R.std() / np.sqrt(n)
    assert abs(R.mean() - analytic) < 5 * standard_error, (t_value, R.mean(), analytic)
    assert standard_error < 0.02 * analytic  # sharp enough to catch a wrong velocity
    paired = R_wrong - R
    assert excess.mean() > 1e-3
    assert abs(paired.mean() - excess.mean()) < 5 * paired.std() / np.sqrt(n)
    assert paired.mean() > 0


# --- (b) stop-gradient placement ----------------------------------------------------------------


def _student_teacher_grads(residual_of, student_params, teacher_params):
  """d/d(student), d/d(teacher) of the mean residual, with separate parameter sets."""
  return jax.grad(lambda sp, tp: jnp.mean(residual_of(sp, tp)), argnums=(0, 1))(
      student_params, teacher_params)


def _tree_max_abs(tree):
  return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree))


def _assert_trees_close(a, b, rtol=1e-10):
  scale = _tree_max_abs(a)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


def _assert_trees_differ(a, b, rtol=1e-3):
  diff = jax.tree.map(lambda x, y: x - y, a, b)
  assert _tree_max_abs(diff) > rtol * _tree_max_abs(a)


@pytest.fixture
def sg_setup(make_mlp_model, make_times_below, x64):
  """A small MLP as student and a differently initialised copy as teacher, on 3-D states."""
  model, student = make_mlp_model(sigma0=SIGMA0, seed=0)
  _, teacher = make_mlp_model(sigma0=SIGMA0, seed=1)
  s, t = make_times_below(7, 32)
  h = _default(np.random.default_rng(8).uniform(size=32))
  x = _default(np.random.default_rng(9).normal(size=(32, 3)))
  return model, student, teacher, s, t, h, x


@pytest.mark.parametrize("family", ("lsd", "psd"))
def test_teacher_stop_gradient_in_lsd_and_psd(family, sg_setup):
  """'teacher' (and 'full', the same placement here): no gradient reaches the teacher, and the
  student's gradient is that of |student term - C|^2 with the target C a constant array.
  'none': the teacher gets a gradient; in LSD the student's gradient changes too, because the
  teacher is evaluated at the student's X (§3)."""
  model, student, teacher, s, t, h, x = sg_setup
  bind = model.bind

  def residual(placement):
    if family == "lsd":
      return lambda sp, tp: obj.lagrangian_residual(bind(sp), bind(tp), s, t, x, placement)
    return lambda sp, tp: obj.progressive_residual(bind(sp), bind(tp), s, t, h, x, placement)

  @jax.jit
  def all_grads(student, teacher):
    # The target as a plain array, and the student term it is compared with.
    if family == "lsd":
      target = fm.velocity(bind(teacher), t, fm.flow_map(bind(student), s, t, x))
      student_term = lambda sp: fm.flow_map_and_dt(bind(sp), s, t, x)[1]
    else:
      u = h * s + (1 - h) * t
      v_su = bind(teacher)(s, u, x)
      v_ut = bind(teacher)(u, t, x + fm.per_sample(u - s, x) * v_su)
      target = fm.per_sample(1 - h, x) * v_su + fm.per_sample(h, x) * v_ut
      student_term = lambda sp: bind(sp)(s, t, x)
    constant_target = jax.grad(
        lambda sp: jnp.mean(obj.squared_norm(student_term(sp) - target)))(student)
    return constant_target, {placement: _student_teacher_grads(residual(placement), student,
                                                               teacher)
                             for placement in PLACEMENTS}

  constant_target_grad, grads = all_grads(student, teacher)
  for placement in ("teacher", "full"):
    g_student, g_teacher = grads[placement]
    assert _tree_max_abs(g_teacher) == 0.0
    _assert_trees_close(g_student, constant_target_grad)
  g_student, g_teacher = grads["none"]
  assert _tree_max_abs(g_teacher) > 1e-4
  if family == "lsd":
    _assert_trees_differ(g_student, constant_target_grad)
  else:  # PSD's teacher input I_s does not depend on the student
    _assert_trees_close(g_student, constant_target_grad)


def test_eulerian_stop_gradient_placements(sg_setup):
  """ESD (§3): 'full' makes the whole spatial term grad_x X . b a constant, 'teacher' only b
  (the student's spatial jvp keeps its gradient), 'none' lets the teacher's b get a gradient."""
  model, student, teacher, s, t, h, x = sg_setup
  bind = model.bind
  residual = lambda placement: (
      lambda sp, tp: obj.eulerian_residual(bind(sp), bind(tp), s, t, x, placement))

  @jax.jit
  def all_grads(student, teacher):
    b = fm.velocity(bind(teacher), s, x)
    transport = fm.flow_map_and_dx(bind(student), s, t, x, b)[1]
    dX_ds = lambda sp: fm.flow_map_and_ds(bind(sp), s, t, x)[1]
    constant_transport = jax.grad(
        lambda sp: jnp.mean(obj.squared_norm(dX_ds(sp) + transport)))(student)
    constant_velocity = jax.grad(lambda sp: jnp.mean(obj.squared_norm(
        dX_ds(sp) + fm.flow_map_and_dx(bind(sp), s, t, x, b)[1])))(student)
    return constant_transport, constant_velocity, {
        placement: _student_teacher_grads(residual(placement), student, teacher)
        for placement in PLACEMENTS}

  constant_transport_grad, constant_velocity_grad, grads = all_grads(student, teacher)
  g_full, g_full_teacher = grads["full"]
  assert _tree_max_abs(g_full_teacher) == 0.0
  _assert_trees_close(g_full, constant_transport_grad)

  g_teacher, g_teacher_teacher = grads["teacher"]
  assert _tree_max_abs(g_teacher_teacher) == 0.0
  _assert_trees_close(g_teacher, constant_velocity_grad)
  _assert_trees_differ(g_teacher, g_full)  # the spatial term's gradient is not zero

  g_none, g_none_teacher = grads["none"]
  assert _tree_max_abs(g_none_teacher) > 1e-4
  _assert_trees_close(g_none, g_teacher)  # with a separate teacher, only b's gradient is added


# --- (c) the batch loss --------------------------------------------------------------------------


class ExactGaussianNetwork(nn.Module):
  """The closed-form v_{s,t}(x) as a flax module, plus a zero offset (init needs a parameter);
  with `learn_weight`, the log weight w(s, t) = w0 + w1 (t - s) + w2 t."""

  flow: GaussianFlow
  learn_weight: bool = False

  def setup(self):
    self.offset = self.param("offset", nn.initializers.zeros, ())
    if self.learn_weight:
      self.w0 = self.param("w0", nn.initializers.zeros, ())
      self.w1 = self.param("w1", nn.initializers.zeros, ())
      self.w2 = self.param("w2", nn.initializers.zeros, ())

  def __call__(self, s, t, x, train=False):
    return self.flow.v(s, t, x) + self.offset

  def log_weight(self, s, t):
    return self.w0 + self.w1 * (t - s) + self.w2 * t


class ZeroNetwork(nn.Module):
  """v = 0: the diagonal residual is then |dI_t|^2."""

  @nn.compact
  def __call__(self, s, t, x, train=False):
    return self.param("scale", nn.initializers.zeros, (), x.dtype) * x


def _data(gf, n, seed):
  return _pairs(gf, n, seed)[1]


EXACT_NETWORK_OBJECTIVES = {"lsd": obj.Objective("lagrangian"),
                            "esd": obj.Objective("eulerian", stop_gradient="full"),
                            "psd-u": obj.Objective("progressive")}


def test_loss_of_exact_network(make_gaussian_flow, x64):
  """Through `objectives.loss`: the off-diagonal term of the exact network is zero to round-off,
  the diagonal term is the conditional variance (positive), and the loss is their row-weighted
  mean (diagonal fraction 0.75). Trigonometric interpolant; the residual tests cover both."""
  gf = make_gaussian_flow("trigonometric", SIGMA0)
  model = fm.FlowMapModel(ExactGaussianNetwork(gf))
  x1 = _data(gf, 512, 10)

  @jax.jit
  def losses(params, key):
    return {label: obj.loss(model, params, x1, key, objective=objective,
                            interpolant=gf.interpolant)
            for label, objective in EXACT_NETWORK_OBJECTIVES.items()}

  for label, (loss, metrics) in losses({"offset": jnp.zeros(())}, jax.random.key(0)).items():
    off_diagonal = EXACT_NETWORK_OBJECTIVES[label].residual
    assert set(metrics) == {"diagonal", off_diagonal, "loss"}
    assert metrics[off_diagonal] < 1e-22, label
    assert metrics["diagonal"] > 0.05
    np.testing.assert_allclose(loss, 0.75 * metrics["diagonal"] + 0.25 * metrics[off_diagonal],
                               rtol=1e-12)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=0)


def test_loss_draws_noise_with_sigma0(make_gaussian_flow, x64):
  """x0 ~ N(0, sigma0^2 I) (§1): with v = 0 and the linear interpolant the diagonal term is
  E|x1 - x0|^2 = mean |x1|^2 + d sigma0^2."""
  gf = make_gaussian_flow("linear", SIGMA0)
  x1 = _data(gf, 20_000, 11)
  model = fm.FlowMapModel(ZeroNetwork())
  objective = obj.Objective("diagonal", diagonal_fraction=1.0)

  @jax.jit
  def diagonal_terms(params, key):
    return [obj.loss(model, params, x1, key, objective=objective,
                     interpolant=interpolants.linear(sigma0))[1] for sigma0 in (0.5, 1.0)]

  for sigma0, metrics in zip((0.5, 1.0), diagonal_terms({"scale": jnp.zeros(())},
                                                         jax.random.key(1))):
    expected = float(jnp.mean(obj.squared_norm(x1))) + 3 * sigma0**2
    # The cross term -2 <x1, x0> has standard error 2 sigma0 sqrt(E|x1|^2 / n) < 0.04; sigma0
    # 0.5 and 1.0 differ by 2.25.
    assert abs(float(metrics["diagonal"]) - expected) < 0.15
    assert set(metrics) == {"diagonal", "loss"}


def test_learned_log_weight(make_mlp_model, make_gaussian_flow, x64):
  """Per-sample exp(-w) R + w (§4): with the weight head set to a constant w, the loss is
  exp(-w) times the unweighted loss plus w, and d loss / d w = 1 - exp(-w) times it; metrics
  report the unweighted residuals."""
  gf = make_gaussian_flow("linear", SIGMA0)
  weighted_model, params = make_mlp_model(sigma0=SIGMA0, learn_weight=True)
  plain_model, _ = make_mlp_model(sigma0=SIGMA0)
  assert weighted_model.learns_weight and not plain_model.learns_weight
  plain_params = {k: p for k, p in params.items() if k != "weight_head"}
  x1 = _data(gf, 64, 12)
  weighted_objective = obj.Objective("progressive", weighting="learned")

  @jax.jit
  def weighted_and_plain(params, key):
    weighted_loss = lambda p: obj.loss(weighted_model, p, x1, key, objective=weighted_objective,
                                       interpolant=gf.interpolant)
    (weighted, weighted_metrics), grad = jax.value_and_grad(weighted_loss, has_aux=True)(params)
    plain, plain_metrics = obj.loss(plain_model, plain_params, x1, key,
                                    objective=obj.Objective("progressive"),
                                    interpolant=gf.interpolant)
    return weighted, weighted_metrics, grad, plain, plain_metrics

  s = jnp.linspace(0.0, 1.0, 5)
  for log_weight in (0.7, -1.2):
    head = params["weight_head"]["Dense_1"]
    params["weight_head"]["Dense_1"] = {"kernel": jnp.zeros_like(head["kernel"]),
                                        "bias": jnp.full_like(head["bias"], log_weight)}
    np.testing.assert_allclose(weighted_model.log_weight(params, s, s[::-1]), log_weight,
                               rtol=1e-14)
    weighted, weighted_metrics, grad, plain, plain_metrics = weighted_and_plain(
        params, jax.random.key(2))
    assert plain > 0.01
    np.testing.assert_allclose(weighted, np.exp(-log_weight) * plain + log_weight, rtol=1e-12)
    for k in ("diagonal", "progressive"):
      np.testing.assert_allclose(weighted_metrics[k], plain_metrics[k], rtol=1e-12)
    np.testing.assert_allclose(grad["weight_head"]["Dense_1"]["bias"][0],
                               1 - np.exp(-log_weight) * plain, rtol=1e-10)


def test_learned_log_weight_on_off_diagonal_rows(make_gaussian_flow, x64):
  """Off-diagonal rows get w at their own (s, t) (§4): with w = w0 + w1 (t - s) and the exact
  network, whose off-diagonal R is 0, the loss is
  0.75 (exp(-w0) E[R_diag] + w0) + 0.25 (w0 + w1 E[t - s]): linear in w1 with slope
  0.25 E[t - s] = 1/12 on the triangle."""
  gf = make_gaussian_flow("linear", SIGMA0)
  model = fm.FlowMapModel(ExactGaussianNetwork(gf, learn_weight=True))
  assert model.learns_weight
  x1 = _data(gf, 512, 15)

  @jax.jit
  def loss_at(w0, w1):
    params = {"offset": jnp.zeros(()), "w0": w0, "w1": w1, "w2": jnp.zeros(())}
    return obj.loss(model, params, x1, jax.random.key(5),
                    objective=obj.Objective("progressive", weighting="learned"),
                    interpolant=gf.interpolant)

  w0 = 0.3
  (loss0, metrics0), (loss1, _), (loss2, _) = [loss_at(w0, w1) for w1 in (0.0, 1.5, 3.0)]
  assert metrics0["progressive"] < 1e-22
  np.testing.assert_allclose(loss0, 0.75 * (np.exp(-w0) * metrics0["diagonal"] + w0) + 0.25 * w0,
                             rtol=1e-12)
  np.testing.assert_allclose(loss2 - loss0, 2 * (loss1 - loss0), rtol=1e-10)
  mean_gap = (loss1 - loss0) / (0.25 * 1.5)
  assert 0.25 < mean_gap < 0.42  # E[t - s] = 1/3 on the triangle; 128 rows


def test_learned_log_weight_is_applied_per_sample(make_gaussian_flow, x64):
  """exp(-w_i) R_i + w_i row by row (§4): flow matching with the exact velocity, whose
  E[R | t] = V(t) is known (see the diagonal test above), and w = 3 t: the loss is
  int_0^1 exp(-w(t)) V(t) + w(t) dt within Monte Carlo error, far from what a weight through the
  batch mean of w would give."""
  gf = make_gaussian_flow("linear", SIGMA0)
  model = fm.FlowMapModel(ExactGaussianNetwork(gf, learn_weight=True))
  n = 20_000
  x1 = _data(gf, n, 16)
  params = {"offset": jnp.zeros(()), "w0": jnp.zeros(()), "w1": jnp.zeros(()),
            "w2": jnp.full((), 3.0)}
  loss, _ = jax.jit(lambda p: obj.loss(
      model, p, x1, jax.random.key(6), objective=obj.Objective(
          "diagonal", diagonal_fraction=1.0, weighting="learned"),
      interpolant=gf.interpolant))(params)

  lam = np.linalg.eigvalsh(np.asarray(gf.cov))
  t = np.linspace(0.0, 1.0, 20_001)
  V = np.sum(SIGMA0**2 * lam / ((1 - t[:, None])**2 * SIGMA0**2 + t[:, None]**2 * lam), axis=1)
  w = 3.0 * t
  per_sample = np.trapezoid(np.exp(-w) * V + w, t)
  through_mean_w = np.exp(-np.trapezoid(w, t)) * np.trapezoid(V, t) + np.trapezoid(w, t)
  assert abs(per_sample - through_mean_w) > 0.4  # 2.68 against 2.21
  assert abs(float(loss) - per_sample) < 0.06  # 5 standard errors (measured: 0.011)


@pytest.mark.parametrize("objective,keys", [
    (obj.Objective("diagonal", diagonal_fraction=1.0), {"diagonal", "loss"}),
    (obj.Objective("lagrangian"), {"diagonal", "lagrangian", "loss"}),
    (obj.Objective("eulerian", stop_gradient="full", diagonal_fraction=0.5),
     {"diagonal", "eulerian", "loss"}),
    (obj.Objective("progressive", diagonal_fraction=0.0), {"progressive", "loss"}),
], ids=("flow_matching", "lsd", "esd", "psd-off-diagonal-only"))
def test_loss_metrics_and_row_weighting(objective, keys, make_mlp_model, make_gaussian_flow):
  """Metrics hold one mean residual per term and the loss; the loss is the mean over all rows,
  so each term counts with its share of the rows (float32, as in training)."""
  gf = make_gaussian_flow("linear", SIGMA0)
  model, params = make_mlp_model(sigma0=SIGMA0)
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  x1 = _data(gf, 40, 13).astype(jnp.float32)
  loss, metrics = jax.jit(lambda p, k: obj.loss(model, p, x1, k, objective=objective,
                                                interpolant=gf.interpolant))(
      params, jax.random.key(3))
  assert set(metrics) == keys
  assert loss.dtype == jnp.float32 and jnp.isfinite(loss)
  fraction = objective.diagonal_fraction
  expected = (fraction * metrics.get("diagonal", 0.0)
              + (1 - fraction) * metrics.get(objective.residual, 0.0))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=0)


def test_teacher_params_default_to_params(make_mlp_model, make_gaussian_flow, x64):
  """Without teacher_params the teacher is the online params under sg: same value as passing
  them explicitly, and the same gradient as a teacher held fixed. With 'none' the default
  teacher passes gradient on, so the gradient changes (PSD; the default is objective-independent
  code)."""
  gf = make_gaussian_flow("linear", SIGMA0)
  model, params = make_mlp_model(sigma0=SIGMA0)
  x1 = _data(gf, 32, 14)

  @jax.jit
  def values_and_grads(params, key):
    out = {}
    for placement in ("teacher", "none"):
      kwargs = dict(objective=obj.Objective("progressive", stop_gradient=placement), interpolant=gf.interpolant)
      default = lambda p: obj.loss(model, p, x1, key, **kwargs)[0]
      fixed_teacher = lambda p: obj.loss(model, p, x1, key, teacher_params=params, **kwargs)[0]
      out[placement] = (jax.value_and_grad(default)(params),
                        jax.value_and_grad(fixed_teacher)(params))
    return out

  out = values_and_grads(params, jax.random.key(4))
  for placement in ("teacher", "none"):
    (value_default, _), (value_fixed, _) = out[placement]
    np.testing.assert_allclose(value_default, value_fixed, rtol=1e-14)
  (_, g_default), (_, g_fixed) = out["teacher"]
  _assert_trees_close(g_default, g_fixed)
  (_, g_default), (_, g_fixed) = out["none"]
  _assert_trees_differ(g_default, g_fixed)


def test_objective_validation_names_the_field():
  with pytest.raises(ValueError, match="objective.residual"):
    obj.Objective("consistency")
  with pytest.raises(ValueError, match="objective.stop_gradient"):
    obj.Objective("lagrangian", stop_gradient="student")
  with pytest.raises(ValueError, match="objective.psd_h"):
    times.TimeDistribution(psd_h="random")
  with pytest.raises(ValueError, match="objective.diagonal_fraction"):
    obj.Objective("diagonal")  # diagonal only: the fraction must be 1.0
  with pytest.raises(ValueError, match="diagonal fraction"):
    obj.Objective("lagrangian", diagonal_fraction=0.123456789)
  with pytest.raises(ValueError, match="diagonal fraction"):
    obj.Objective("lagrangian", diagonal_fraction=1.5)
  assert obj.Objective("diagonal", diagonal_fraction=1.0).layout.fraction == 1.0
  assert obj.Objective("lagrangian").layout == (4, 3)
  # Combinations a residual does not admit are named with what it does admit.
  with pytest.raises(ValueError, match="objective.velocity: 'conditional' does not apply to the "
                     "lagrangian residual"):
    obj.Objective("lagrangian", velocity="conditional")
  with pytest.raises(ValueError, match="objective.times: 'ict_grid' does not apply"):
    obj.Objective("eulerian", times=times.TimeDistribution("ict_grid"))
  with pytest.raises(ValueError, match="objective.stop_gradient: 'derivatives' does not apply"):
    obj.Objective("progressive", stop_gradient="derivatives")
  with pytest.raises(ValueError, match="tangent_normalization"):
    obj.Objective("eulerian", stop_gradient="full", tangent_normalization=0.1)
  with pytest.raises(ValueError, match="objective.times: unknown value"):
    times.TimeDistribution("uniform")


class DropoutNetwork(nn.Module):
  """A small MLP with dropout on its hidden layer (train=True draws from the 'dropout' stream)."""

  @nn.compact
  def __call__(self, s, t, x, train=False):
    h = jnp.concatenate([s[:, None], t[:, None], x], axis=-1)
    h = nn.Dropout(0.5, deterministic=not train)(nn.gelu(nn.Dense(32)(h)))
    return nn.Dense(x.shape[-1])(h)


class RecordingModel(fm.FlowMapModel):
  """A FlowMapModel that records the dropout key of every bind."""

  def bind(self, params, dropout_key=None, condition=None):
    self.keys.append(dropout_key)
    return super().bind(params, dropout_key, condition)


@pytest.mark.parametrize("placement", ("diagonal", "all"))
def test_dropout_placement_and_independent_masks(placement, make_gaussian_flow):
  """'diagonal' (the release): only the flow-matching term runs the student with dropout, so the
  off-diagonal residual equals the deterministic network's exactly; 'all': the off-diagonal
  student has dropout too, under a key of its own, never the diagonal term's; the teacher is
  always deterministic."""
  gf = make_gaussian_flow("linear", SIGMA0)
  model = RecordingModel(DropoutNetwork())
  object.__setattr__(model, "keys", [])
  params = model.init(jax.random.key(0), jnp.zeros((4, 3)))
  x1 = _data(gf, 64, 21).astype(jnp.float32)
  objective = obj.Objective("lagrangian", dropout=placement)
  run = lambda train: obj.loss(model, params, x1, jax.random.key(1), objective=objective,
                               interpolant=gf.interpolant, train=train)[1]
  deterministic, model.keys[:] = run(False), []
  with_dropout = run(True)
  diag_key, off_key, teacher_key = model.keys  # student diagonal, student off-diagonal, teacher
  assert diag_key is not None and teacher_key is None
  assert abs(float(with_dropout["diagonal"]) - float(deterministic["diagonal"])) > 1e-4
  if placement == "diagonal":
    assert off_key is None
    np.testing.assert_array_equal(with_dropout["lagrangian"], deterministic["lagrangian"])
  else:
    assert off_key is not None
    assert not np.array_equal(jax.random.key_data(off_key), jax.random.key_data(diag_key))
    assert abs(float(with_dropout["lagrangian"]) - float(deterministic["lagrangian"])) > 1e-6
