"""Every preset of the objective table against an independent reference written from its own
paper (`peer_references.py`, which imports nothing from flow_maps), in float64: our batched
per-row loss and its parameter gradient against the per-sample reference `vmap`-ed over rows, on
random inputs and a random MLP (`docs/method.md` §8). The time distributions are checked against
the references' own samplers. MeanFlow, shortcut, iCT, LMD, EMD, PMD: loss and gradient equal to
round-off; sCM and consistency distillation: each row's gradient equals the reference's times
the explicit factor kappa(s) of `peer_references.scm_kappa` (the two parameterisations weight
the same pseudo-gradient differently in time)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peer_references as ref
from flow_maps import config_defaults
from flow_maps import flow_map as fm
from flow_maps import interpolants
from flow_maps import objectives as obj
from flow_maps import times as times_lib

sg = jax.lax.stop_gradient
DIM = 3
N = 16


def preset_objective(name: str, **overrides) -> obj.Objective:
  """The Objective a config with this preset builds."""
  c = config_defaults.with_preset(config_defaults.checkerboard(), name)
  for k, v in overrides.items():
    c.objective[k] = v
  return obj.from_config(c.objective, c.train.num_steps)


def per_sample(model, params):
  """Our network as the references take it: net(s, t, x) for scalar times and x [D]."""
  def net(s, t, x):
    s, t = (jnp.reshape(jnp.asarray(a, x.dtype), (1,)) for a in (s, t))
    return model.module.apply({"params": params}, s, t, x[None])[0]
  return net


def ours(objective, model, params, teacher, x0, x1, times, interpolant, pretrained=None,
         step=0):
  """Our per-row losses [B] on given times: the loss's own code path without its time draw."""
  v, v_teacher = model.bind(params), model.bind(sg(teacher))
  drive = v_teacher if pretrained is None else pretrained
  R = objective.off_diagonal_residual(v, v_teacher, drive, times, x0, x1, interpolant, step)
  return objective.row_loss(R, x1.shape[-1], times.weight)


def assert_loss_and_grad_equal(ours_fn, ref_fn, params, rtol=1e-10):
  """mean over rows and d/dparams of it: ours (batched) against the reference (vmap-ed)."""
  a, ga = jax.value_and_grad(lambda p: jnp.mean(ours_fn(p)))(params)
  b, gb = jax.value_and_grad(lambda p: jnp.mean(ref_fn(p)))(params)
  assert float(a) > 1e-6  # something is being compared
  np.testing.assert_allclose(a, b, rtol=rtol)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(gb))
  assert scale > 1e-8
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


@pytest.fixture
def setup(make_mlp_model, x64):
  model, params = make_mlp_model(dim=DIM, width=16, depth=2, sigma0=0.7, seed=0)
  _, teacher = make_mlp_model(dim=DIM, width=16, depth=2, sigma0=0.7, seed=1)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(0.7 * rng.normal(size=(N, DIM)))
  x1 = jnp.asarray(rng.normal(size=(N, DIM)) + 0.3)
  return model, params, teacher, x0, x1, rng


def _times(s, t, h=None, weight=1.0, s_target=None):
  h = jnp.full_like(s, 0.5) if h is None else h
  return times_lib.OffDiagonalTimes(s=s, t=t, h=h, weight=weight, s_target=s_target)


def test_meanflow_is_its_paper(setup):
  """MeanFlow's u_tgt = v - (t - r) du/dt with tangent (v, 0, 1) in its own time direction, the
  adaptive weight sg[(|Delta|^2 + c)^-p] |Delta|^2: the Eulerian residual, conditional velocity,
  gradient through v only; MeanFlow's (r, t) = our (1 - t, 1 - s)."""
  model, params, _, x0, x1, rng = setup
  objective = preset_objective("meanflow")
  ip = interpolants.linear(0.7)
  r_mf, t_mf = np.sort(rng.uniform(0.02, 0.98, size=(2, N)), axis=0)
  s, t = jnp.asarray(1 - t_mf), jnp.asarray(1 - r_mf)
  c = config_defaults.PRESETS["meanflow"]["adaptive_c"]
  ref_rows = lambda p: jax.vmap(lambda e, x, r, tt: ref.meanflow_loss(
      per_sample(model, p), e, x, r, tt, c=c))(x0, x1, jnp.asarray(r_mf), jnp.asarray(t_mf))
  assert_loss_and_grad_equal(
      lambda p: ours(objective, model, p, p, x0, x1, _times(s, t), ip), ref_rows, params)


def test_meanflow_diagonal_rows_are_its_r_equals_t_rows(setup):
  """MeanFlow's rows with r = t are flow matching under the same adaptive weight: our diagonal
  term with the preset's per-row loss."""
  model, params, _, x0, x1, rng = setup
  objective = preset_objective("meanflow")
  ip = interpolants.linear(0.7)
  t_mf = jnp.asarray(rng.uniform(0.02, 0.98, size=N))
  c = config_defaults.PRESETS["meanflow"]["adaptive_c"]
  ref_rows = lambda p: jax.vmap(lambda e, x, tt: ref.meanflow_loss(
      per_sample(model, p), e, x, tt, tt, c=c))(x0, x1, t_mf)
  ours_rows = lambda p: objective.row_loss(
      obj.diagonal_residual(model.bind(p), 1 - t_mf, x0, x1, ip), DIM)
  assert_loss_and_grad_equal(ours_rows, ref_rows, params)


def test_meanflow_times_are_its_sampler_translated(x64):
  """Our logit-normal pairs (s, t) have the law of MeanFlow's (1 - t, 1 - r), and our diagonal
  times that of its r = t rows' 1 - t (the larger of its two draws): two-sample KS tests."""
  from scipy import stats
  td = preset_objective("meanflow").times
  n = 20_000
  ip = interpolants.linear(1.0)
  ours_off = td.off_diagonal(jax.random.key(0), n, ip)
  ours_diag = td.diagonal(jax.random.key(1), n)
  r, t = ref.meanflow_sample_tr(jax.random.key(2), n, data_proportion=0.0)
  _, t_diag = ref.meanflow_sample_tr(jax.random.key(3), n, data_proportion=1.0)
  for a, b in ((ours_off.s, 1 - t), (ours_off.t, 1 - r), (ours_diag, 1 - t_diag)):
    assert stats.ks_2samp(np.asarray(a), np.asarray(b)).pvalue > 1e-3
  # And a wrong translation (MeanFlow's mean unflipped) is told apart.
  wrong = times_lib.TimeDistribution("logit_normal", logit_normal_mean=-0.4)
  assert stats.ks_2samp(np.asarray(wrong.off_diagonal(jax.random.key(0), n, ip).s),
                        np.asarray(1 - t)).pvalue < 1e-6


def test_shortcut_is_its_paper(setup):
  """Shortcut models' self-consistency |s(x_t, t, 2d) - sg[s(x_t, t, d) / 2 +
  s(x'_{t+d}, t + d, d) / 2]|^2 with an EMA teacher: PSD-M on (t, t + 2d)."""
  model, params, teacher, x0, x1, rng = setup
  objective = preset_objective("shortcut")
  ip = interpolants.linear(0.7)
  k = rng.integers(0, 7, size=N)
  d = jnp.asarray(0.5 ** (k + 1))  # half of the student's dyadic step
  t_sc = jnp.asarray(rng.integers(0, 2 ** k) / 2.0 ** k)
  ref_rows = lambda p: jax.vmap(lambda a, b, tt, dd: ref.shortcut_loss(
      per_sample(model, p), per_sample(model, teacher), a, b, tt, dd, reduce="sum"))(
          x0, x1, t_sc, d)
  assert_loss_and_grad_equal(
      lambda p: ours(objective, model, p, teacher, x0, x1, _times(t_sc, t_sc + 2 * d), ip),
      ref_rows, params)


def test_shortcut_times_are_its_dyadic_grid(x64):
  """Student steps 2d in {1, 1/2, ..., 1/64}, each level about equally often (the release splits
  levels evenly), starts on the multiples of the step, t <= 1; the same support as the
  reference sampler's."""
  td = preset_objective("shortcut").times
  off = td.off_diagonal(jax.random.key(0), 14_000, interpolants.linear(1.0))
  gap = np.asarray(off.t - off.s)
  levels = np.round(-np.log2(gap)).astype(int)
  np.testing.assert_allclose(gap, 0.5 ** levels, rtol=1e-12)
  counts = np.bincount(levels, minlength=7)
  assert len(counts) == 7 and counts.min() > 1700  # 2000 expected per level
  np.testing.assert_allclose(np.asarray(off.s) / gap, np.round(np.asarray(off.s) / gap),
                             atol=1e-9)
  assert np.all(np.asarray(off.t) <= 1.0)
  t_ref, d_ref = ref.shortcut_sample_bootstrap(jax.random.key(1), 14_000)
  assert set(np.round(-np.log2(2 * np.asarray(d_ref))).astype(int)) == set(range(7))
  assert np.all(np.asarray(off.h) == 0.5)


def test_ict_is_its_paper(setup):
  """iCT: lambda(sigma_i) pseudo-Huber(f(x1 + sigma_{i+1} z, sigma_{i+1}),
  sg f(x1 + sigma_i z, sigma_i)), the student at the noisier level, in VE coordinates."""
  model, params, _, x0, x1, rng = setup
  objective = preset_objective("consistency_training_discrete")
  ip = interpolants.linear(0.7)
  sigmas = np.asarray(ref.ict_sigmas(41))
  i = rng.integers(0, 40, size=N)
  sigma_lo, sigma_hi = jnp.asarray(sigmas[i]), jnp.asarray(sigmas[i + 1])
  times = _times(ip.time_of_noise_ratio(sigma_hi), jnp.ones(N), weight=1 / (sigma_hi - sigma_lo),
                 s_target=ip.time_of_noise_ratio(sigma_lo))
  c = 0.00054 * math.sqrt(DIM)
  z = x0 / 0.7
  ref_rows = lambda p: jax.vmap(lambda a, zz, lo, hi: ref.ict_loss(
      per_sample(model, p), per_sample(model, p), a, zz, lo, hi, sigma0=0.7, c=c))(
          x1, z, sigma_lo, sigma_hi)
  assert_loss_and_grad_equal(lambda p: ours(objective, model, p, p, x0, x1, times, ip), ref_rows,
                             params)


def test_ict_curriculum_grid_and_pair_law_are_its_paper(x64):
  """N(k), the Karras grid and the discrete log-normal over pairs equal iCT's formulas."""
  K = 400_000
  for k in (0, 1, 40_000, 57_142, 57_143, 200_000, 399_999):
    assert int(times_lib.ict_num_scales(k, K, 10, 1280)) == ref.ict_num_scales(k, K), k
  for num in (11, 81, 1281):
    sigmas = times_lib.karras_sigmas(jnp.asarray(num), 1281, 0.002, 80.0, 7.0)
    np.testing.assert_allclose(sigmas[:num], ref.ict_sigmas(num), rtol=1e-12)
    p_ours = jax.nn.softmax(times_lib.ict_pair_logits(sigmas, jnp.asarray(num), -1.1, 2.0))
    np.testing.assert_allclose(p_ours[:num - 1], ref.ict_index_probabilities(ref.ict_sigmas(num)),
                               rtol=1e-9, atol=1e-15)
    assert float(jnp.sum(p_ours[num - 1:])) == 0.0
  # The sampler draws pairs with these probabilities (chi-square over the 40 pairs of N = 41).
  from scipy import stats
  sigmas = times_lib.karras_sigmas(jnp.asarray(41), 1281, 0.002, 80.0, 7.0)
  lo, hi = times_lib.sample_ict_pairs(jax.random.key(0), 200_000, jnp.asarray(41), 1281, 0.002,
                                      80.0, 7.0, -1.1, 2.0)
  i = np.searchsorted(np.asarray(sigmas[:41]), np.asarray(lo))
  np.testing.assert_allclose(np.asarray(sigmas)[i + 1], hi, rtol=1e-12)
  counts = np.bincount(i, minlength=40)
  assert len(counts) == 40
  expected = 200_000 * np.asarray(ref.ict_index_probabilities(ref.ict_sigmas(41)))
  keep = expected > 5
  chi2 = np.sum((counts[keep] - expected[keep])**2 / expected[keep])
  assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4, chi2


@pytest.mark.parametrize("preset", ("consistency_training", "consistency_distillation"))
def test_scm_is_its_paper_up_to_a_time_weight(preset, setup):
  """sCM's pseudo-gradient (Algorithm 1, TrigFlow, r = 1, no normalisation) of every row is
  kappa(s) times ours; for distillation the pretrained velocity is a frozen network in both."""
  model, params, teacher, x0, x1, rng = setup
  objective = preset_objective(preset, tangent_normalization=0.0, tangent_warmup_steps=0,
                               weighting="none",
                               **({"velocity": "pretrained"} if "distillation" in preset else {}))
  sigma_d = 0.7
  ip = interpolants.trigonometric(sigma_d)
  t_trig = jnp.asarray(rng.uniform(0.05, math.pi / 2 - 0.05, size=N))
  s = ref.trig_s_from_t(t_trig)
  pretrained, velocity = None, None
  if "distillation" in preset:
    b_net = model.bind(teacher)
    pretrained = b_net  # ours: its diagonal v_{s,s} is b_s in our time
    # theirs: dx_t/dt in TrigFlow time = -(2 / pi) b_s(x)
    velocity = lambda x, tt: -(2 / math.pi) * per_sample(model, teacher)(
        ref.trig_s_from_t(tt), ref.trig_s_from_t(tt), x)
  def ours_row(p, i):
    return ours(objective, model, p, p, x0[i:i + 1], x1[i:i + 1],
                _times(s[i:i + 1], jnp.ones(1)), ip, pretrained)[0]

  def ref_row(p, i):
    return ref.scm_loss(per_sample(model, p), per_sample(model, sg(p)), x1[i], x0[i], t_trig[i],
                        sigma_d=sigma_d, r=1.0, c_norm=None, velocity=velocity)

  for i in range(N):
    g_ours = jax.grad(ours_row)(params, i)
    g_ref = jax.grad(ref_row)(params, i)
    kappa = float(ref.scm_kappa(s[i], sigma_d))
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_ref)])
    b = kappa * np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_ours)])
    assert np.linalg.norm(b) > 1e-8
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.linalg.norm(b))


def test_tangent_normalisation_and_warmup(setup):
  """With c > 0 the row's value is |E|^2 / (|E| + c)^2 and its gradient the plain one divided
  by |E| + c; the warm-up factor r scales the derivative term of T, r = 0 regressing v_{s,1} on
  the conditional velocity alone."""
  model, params, _, x0, x1, rng = setup
  ip = interpolants.trigonometric(0.7)
  s = jnp.asarray(rng.uniform(0.05, 0.95, size=N))
  times = _times(s, jnp.ones(N))
  plain = preset_objective("consistency_training", tangent_normalization=0.0,
                           tangent_warmup_steps=0, weighting="none")
  normed = preset_objective("consistency_training", tangent_normalization=0.1,
                            tangent_warmup_steps=0, weighting="none")
  R = ours(plain, model, params, params, x0, x1, times, ip)
  np.testing.assert_allclose(ours(normed, model, params, params, x0, x1, times, ip),
                             R / (jnp.sqrt(R) + 0.1) ** 2, rtol=1e-12)
  for i in (0, 5):
    row = lambda p, o: ours(o, model, p, p, x0[i:i + 1], x1[i:i + 1],
                            _times(s[i:i + 1], jnp.ones(1)), ip)[0]
    g_plain, g_norm = jax.grad(row)(params, plain), jax.grad(row)(params, normed)
    for a, b in zip(jax.tree.leaves(g_norm), jax.tree.leaves(g_plain)):
      np.testing.assert_allclose(a, b / (float(jnp.sqrt(R[i])) + 0.1), rtol=1e-10, atol=1e-14)
  warm = preset_objective("consistency_training", tangent_normalization=0.0, weighting="none")
  assert warm.tangent_warmup_steps == 10_000
  v = model.bind(params)
  regress = obj.squared_norm(v(s, jnp.ones(N), ip.interpolate(s, x0, x1))
                             - ip.time_derivative(s, x0, x1))
  np.testing.assert_allclose(ours(warm, model, params, params, x0, x1, times, ip, step=0),
                             regress, rtol=1e-12)
  np.testing.assert_allclose(ours(warm, model, params, params, x0, x1, times, ip, step=10_000),
                             R, rtol=1e-12)


@pytest.mark.parametrize("preset", ("lmd", "emd", "pmd"))
def test_flow_map_distillation_is_its_paper(preset, setup):
  """LMD |d/dt X - sg b_t(sg X)|^2 and EMD |d/ds X + sg(grad_x X . b_s)|^2 with a frozen velocity
  b (a separate network); PMD's two-step self-teacher target."""
  model, params, teacher, x0, x1, rng = setup
  objective = preset_objective(preset, pretrained="/teacher")
  ip = interpolants.linear(0.7)
  u = np.sort(rng.uniform(0.02, 0.98, size=(3, N)), axis=0)
  s, mid, t = (jnp.asarray(a) for a in u)
  x = ip.interpolate(s, x0, x1)
  b_net = model.bind(teacher)
  b_ref = lambda tt, xx: per_sample(model, teacher)(tt, tt, xx)
  if preset == "lmd":
    one = lambda p, ss, tt, xx: ref.lmd_loss(per_sample(model, p), b_ref, ss, tt, xx)
  elif preset == "emd":
    one = lambda p, ss, tt, xx: ref.emd_loss(per_sample(model, p), b_ref, ss, tt, xx,
                                             stop_gradient="full")
  if preset == "pmd":
    h = (t - mid) / (t - s)
    times = _times(s, t, h)
    ref_rows = lambda p: jax.vmap(lambda ss, uu, tt, xx: ref.pmd_loss(
        per_sample(model, p), per_sample(model, sg(p)), ss, uu, tt, xx))(s, mid, t, x)
  else:
    times = _times(s, t)
    ref_rows = lambda p: jax.vmap(lambda ss, tt, xx: one(p, ss, tt, xx))(s, t, x)
  assert_loss_and_grad_equal(
      lambda p: ours(objective, model, p, p, x0, x1, times, ip, b_net), ref_rows, params)


def test_distillation_diagonal_matches_the_pretrained_velocity(setup):
  """The distillation presets' diagonal rows regress v_{t,t}(I_t) on sg b_t(I_t), not on dI_t."""
  model, params, teacher, x0, x1, rng = setup
  ip = interpolants.linear(0.7)
  t = jnp.asarray(rng.uniform(size=N))
  It = ip.interpolate(t, x0, x1)
  R = obj.diagonal_residual(model.bind(params), t, x0, x1, ip, model.bind(teacher))
  expected = jax.vmap(lambda tt, xx: jnp.sum(
      (per_sample(model, params)(tt, tt, xx) - per_sample(model, teacher)(tt, tt, xx))**2))(t, It)
  np.testing.assert_allclose(R, expected, rtol=1e-12)
  g = jax.grad(lambda p: jnp.mean(obj.diagonal_residual(model.bind(params), t, x0, x1, ip,
                                                        model.bind(p))))(teacher)
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g)) == 0.0


# --- the closed-form Gaussian flow (`docs/method.md` §7) ------------------------------------------

SELF_OR_PRETRAINED = ("lsd", "esd", "psd_m", "psd_u", "shortcut", "lmd", "emd", "pmd",
                      "consistency_distillation")


@pytest.mark.parametrize("interpolant_name", ("linear", "trigonometric"))
@pytest.mark.parametrize("preset", SELF_OR_PRETRAINED)
def test_self_and_pretrained_residuals_vanish_at_the_exact_map(preset, interpolant_name,
                                                               make_gaussian_flow, x64):
  """With the exact v as the network (and as the pretrained teacher), every self-driven or
  pretrained-driven preset's residual is zero to round-off, under its own placement and with
  'derivatives' where it applies; a map scaled by 1.05 is not."""
  gf = make_gaussian_flow(interpolant_name, 0.7)
  rng = np.random.default_rng(4)
  n = 64
  u = rng.uniform(size=(2, n))
  s, t = np.minimum(u.min(0), 0.9), np.maximum(u.max(0), u.min(0) + 0.05)
  overrides = {"pretrained": "/teacher"} if preset in ("lmd", "emd", "pmd",
                                                       "consistency_distillation") else {}
  objective = preset_objective(preset, **overrides)
  if objective.times.single_time:
    t = np.ones(n)
  times = _times(jnp.asarray(s), jnp.asarray(t), jnp.asarray(rng.uniform(size=n)))
  rngd = np.random.default_rng(5)
  x0 = jnp.asarray(0.7 * rngd.normal(size=(n, 3)))
  x1 = gf.mean + jnp.asarray(rngd.normal(size=(n, 3))) @ jnp.linalg.cholesky(gf.cov).T
  placements = [objective.stop_gradient]
  if objective.residual in ("lagrangian", "eulerian") and "derivatives" not in placements:
    placements.append("derivatives")
  pretrained = gf.v if objective.velocity == "pretrained" else None
  for placement in placements:
    o = obj.Objective(**{**objective.__dict__, "stop_gradient": placement})
    for scale, small in ((1.0, True), (1.05, False)):
      v = lambda s_, t_, x_, scale=scale: scale * gf.v(s_, t_, x_)
      R = o.off_diagonal_residual(v, v, pretrained if pretrained is not None else v, times,
                                  x0, x1, gf.interpolant)
      if small:
        assert float(jnp.max(R)) < 1e-20, (preset, placement)
      else:
        assert float(jnp.mean(R)) > 1e-6, (preset, placement)


def _posterior_data(gf, s, x, m, rng):
  """m draws of (x0, x1) given I_s = x for Gaussian data: x1 | I_s = x is Gaussian with mean
  mu + beta Sigma C^-1 (x - beta mu) and covariance Sigma - beta^2 Sigma C^-1 Sigma,
  C = alpha^2 sigma0^2 I + beta^2 Sigma; then x0 = (x - beta x1) / alpha."""
  ip = gf.interpolant
  a, b = float(ip.alpha(jnp.asarray(s))), float(ip.beta(jnp.asarray(s)))
  mu, cov = np.asarray(gf.mean), np.asarray(gf.cov)
  C = a**2 * ip.sigma0**2 * np.eye(len(mu)) + b**2 * cov
  gain = b * cov @ np.linalg.inv(C)
  mean = mu + gain @ (x - b * mu)
  post = cov - b * gain @ cov
  x1 = mean + rng.normal(size=(m, len(mu))) @ np.linalg.cholesky(0.5 * (post + post.T)).T
  return jnp.asarray((x - b * x1) / a), jnp.asarray(x1)


@pytest.mark.parametrize("preset", ("meanflow", "consistency_training"))
def test_conditional_targets_average_to_the_exact_map(preset, make_gaussian_flow, x64):
  """For the conditional-velocity presets the target T = dI_s + (t - s)(d/ds v + grad_x v . dI_s)
  is random given I_s = x; its conditional mean (Monte Carlo over x1 | I_s = x, closed form)
  equals v_{s,t}(x) at the exact map within 5 standard errors, and a map scaled by 1.25 is more
  than 10 standard errors off."""
  objective = preset_objective(preset)
  gf = make_gaussian_flow("trigonometric" if preset == "consistency_training" else "linear", 0.7)
  rng = np.random.default_rng(6)
  m = 50_000
  for s, t in ((0.2, 0.7), (0.5, 1.0), (0.8, 1.0)):
    if objective.times.single_time:
      t = 1.0
    x = np.asarray(gf.mean) + rng.normal(size=3)
    x0, x1 = _posterior_data(gf, s, x, m, rng)
    ss, tt = jnp.full((m,), s), jnp.full((m,), t)
    xs = jnp.broadcast_to(jnp.asarray(x), (m, 3))
    np.testing.assert_allclose(gf.interpolant.interpolate(ss, x0, x1), xs, atol=1e-10)
    b = gf.interpolant.time_derivative(ss, x0, x1)
    for scale, exact in ((1.0, True), (1.25, False)):
      v = lambda s_, t_, x_, scale=scale: scale * gf.v(s_, t_, x_)
      v_st, transport = fm.velocity_and_transport(v, ss, tt, xs, b)
      T = np.asarray(b + (tt - ss)[:, None] * transport)
      z = (T.mean(0) - np.asarray(v_st[0])) / (T.std(0) / np.sqrt(m))
      if exact:
        assert np.max(np.abs(z)) < 5, (s, t, z)
      else:
        assert np.max(np.abs(z)) > 10, (s, t, z)
