"""The flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x), its derivatives and the N-step sampler
(`docs/method.md` §2), checked against the closed-form Gaussian flow (§7) in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flow_maps import flow_map as fm

NAMES = ("linear", "trigonometric")
SIGMA0S = (0.7, 1.3)
unit_time = st.floats(0.0, 1.0, allow_nan=False)


def _default(a):
  return jnp.asarray(a, jnp.zeros(()).dtype)


def _states(seed, n, dim):
  """States spread wider than the data (numpy draws: no per-shape compile)."""
  return _default(1.5 * np.random.default_rng(seed).normal(size=(n, dim)) + 0.3)


def _all_times(seed, n):
  """s, t anywhere in [0, 1], endpoints included, t < s allowed."""
  times = np.random.default_rng(seed).uniform(size=(2, n))
  times[:, :4] = [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]
  return _default(times)


# --- (a) the closed form is the flow of its velocity (§7) ---------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma0", SIGMA0S)
def test_gaussian_velocity_is_the_conditional_mean_of_dI(name, sigma0, make_gaussian_flow, x64):
  """b_t(x) = E[dI_t | I_t = x] (§1), computed here by Gaussian conditioning without the
  eigenbasis: E[dI] + Cov(dI, I) Cov(I)^{-1} (x - E[I])."""
  gf = make_gaussian_flow(name, sigma0)
  ip, mu, cov = gf.interpolant, gf.mean, gf.cov
  eye = jnp.eye(mu.shape[0])
  x = _states(0, 8, mu.shape[0])
  for t in (0.0, 0.2, 0.5, 0.9, 1.0):
    a, b, da, db = ip.alpha(t), ip.beta(t), ip.dalpha(t), ip.dbeta(t)
    cov_I = a**2 * sigma0**2 * eye + b**2 * cov
    cov_dI_I = a * da * sigma0**2 * eye + b * db * cov
    expected = db * mu + (x - b * mu) @ jnp.linalg.solve(cov_I, cov_dI_I.T)
    np.testing.assert_allclose(gf.velocity(jnp.full(8, t), x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma0", SIGMA0S)
def test_gaussian_map_carries_the_law_of_I_s_to_that_of_I_t(name, sigma0, make_gaussian_flow,
                                                            x64):
  """X_{s,t} is affine; it maps N(beta_s mu, C_s) to N(beta_t mu, C_t) with
  C_t = alpha_t^2 sigma0^2 I + beta_t^2 Sigma; X_{0,1} maps the noise to the data law."""
  gf = make_gaussian_flow(name, sigma0)
  ip, mu, cov = gf.interpolant, gf.mean, gf.cov
  dim = mu.shape[0]

  def law(t):
    return ip.beta(t) * mu, ip.alpha(t)**2 * sigma0**2 * jnp.eye(dim) + ip.beta(t)**2 * cov

  for s, t in ((0.0, 1.0), (0.0, 0.3), (0.25, 0.8), (0.9, 0.1), (0.6, 1.0)):
    one = lambda x: gf.flow_map(jnp.array([s]), jnp.array([t]), x[None])[0]
    m_s, c_s = law(s)
    m_t, c_t = law(t)
    A = jax.jacfwd(one)(m_s)
    np.testing.assert_allclose(one(m_s), m_t, atol=1e-12)
    np.testing.assert_allclose(A @ c_s @ A.T, c_t, atol=1e-12)
    # Transport along the flow is a symmetric positive map in Sigma's eigenbasis.
    np.testing.assert_allclose(A, A.T, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma0", SIGMA0S)
def test_gaussian_map_satisfies_lagrangian_equation(name, sigma0, make_gaussian_flow, x64):
  """d/dt X_{s,t}(x) = b_t(X_{s,t}(x)) (§2), by jvp and by central differences."""
  gf = make_gaussian_flow(name, sigma0)
  s, t = _all_times(1, 64)
  x = _states(1, 64, 3)
  X, dX_dt = jax.jvp(lambda t_: gf.flow_map(s, t_, x), (t,), (jnp.ones_like(t),))
  b_at_X = gf.velocity(t, X)
  np.testing.assert_allclose(dX_dt, b_at_X, rtol=1e-11, atol=1e-11)
  eps = 1e-5
  central = (gf.flow_map(s, t + eps, x) - gf.flow_map(s, t - eps, x)) / (2 * eps)
  np.testing.assert_allclose(central, b_at_X, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma0", SIGMA0S)
def test_gaussian_map_satisfies_eulerian_equation(name, sigma0, make_gaussian_flow, x64):
  """d/ds X_{s,t}(x) + grad_x X_{s,t}(x) . b_s(x) = 0 (§2), by jvp and by central differences."""
  gf = make_gaussian_flow(name, sigma0)
  s, t = _all_times(2, 64)
  x = _states(2, 64, 3)
  b_s = gf.velocity(s, x)
  _, dX_ds = jax.jvp(lambda s_: gf.flow_map(s_, t, x), (s,), (jnp.ones_like(s),))
  _, transport = jax.jvp(lambda x_: gf.flow_map(s, t, x_), (x,), (b_s,))
  scale = jnp.max(jnp.abs(dX_ds))
  assert scale > 0.1  # both terms are O(1): their cancellation is not trivial
  np.testing.assert_allclose(dX_ds + transport, 0.0, atol=1e-11)
  eps = 1e-5
  central_s = (gf.flow_map(s + eps, t, x) - gf.flow_map(s - eps, t, x)) / (2 * eps)
  central_x = (gf.flow_map(s, t, x + eps * b_s) - gf.flow_map(s, t, x - eps * b_s)) / (2 * eps)
  np.testing.assert_allclose(central_s + central_x, 0.0, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(s=unit_time, u=unit_time, t=unit_time, sigma0=st.sampled_from(SIGMA0S))
def test_gaussian_map_satisfies_semigroup(name, s, u, t, sigma0, make_gaussian_flow):
  """X_{u,t}(X_{s,u}(x)) = X_{s,t}(x) (§2), for any s, u, t in [0, 1] (u need not lie between)."""
  with jax.enable_x64(True):
    gf = make_gaussian_flow(name, sigma0)
    x = _states(3, 16, 3)
    full = lambda a: jnp.full((16,), a)
    two_steps = gf.flow_map(full(u), full(t), gf.flow_map(full(s), full(u), x))
    np.testing.assert_allclose(two_steps, gf.flow_map(full(s), full(t), x), rtol=1e-11,
                               atol=1e-11)


def test_perturbed_gaussian_map_violates_the_identities(make_gaussian_flow, x64):
  """The checks above can fail: a map with the wrong variance schedule breaks all three."""
  gf = make_gaussian_flow("linear", 0.7)
  lam, Q = jnp.linalg.eigh(gf.cov)

  def wrong_map(s, t, x):  # c_t with lambda inflated by 10%
    ip = gf.interpolant
    c = lambda r: ip.alpha(r)[:, None]**2 * 0.49 + ip.beta(r)[:, None]**2 * 1.1 * lam
    centred = (x - ip.beta(s)[:, None] * gf.mean) @ Q
    return ip.beta(t)[:, None] * gf.mean + (jnp.sqrt(c(t) / c(s)) * centred) @ Q.T

  s, t = jnp.full(8, 0.2), jnp.full(8, 0.9)
  x = _states(4, 8, 3)
  X, dX_dt = jax.jvp(lambda t_: wrong_map(s, t_, x), (t,), (jnp.ones_like(t),))
  assert jnp.max(jnp.abs(dX_dt - gf.velocity(t, X))) > 1e-2
  _, dX_ds = jax.jvp(lambda s_: wrong_map(s_, t, x), (s,), (jnp.ones_like(s),))
  _, transport = jax.jvp(lambda x_: wrong_map(s, t, x_), (x,), (gf.velocity(s, x),))
  assert jnp.max(jnp.abs(dX_ds + transport)) > 1e-2
  # The wrong map is still a semigroup (it is the flow of another Gaussian), but it is not X.
  assert jnp.max(jnp.abs(wrong_map(s, t, x) - gf.flow_map(s, t, x))) > 1e-2


# --- (b) X_{s,s} = id and b = v_{t,t} ------------------------------------------------------------


def test_map_is_identity_on_the_diagonal(make_mlp_model, make_gaussian_flow, x64):
  """X_{s,s} = id exactly, by the parameterisation (§2), for a network and the closed form."""
  model, params = make_mlp_model()
  v = model.bind(params)
  s = jnp.linspace(0.0, 1.0, 7)
  x = _states(5, 7, 3)
  np.testing.assert_array_equal(fm.flow_map(v, s, s, x), x)
  gf = make_gaussian_flow("trigonometric", 1.3)
  np.testing.assert_allclose(gf.flow_map(s, s, x), x, rtol=0, atol=1e-14)
  np.testing.assert_array_equal(fm.flow_map(gf.v, s, s, x), x)


def test_velocity_is_the_diagonal_and_the_tangent(make_mlp_model, x64):
  """b_t = v_{t,t}, and d/dt X_{s,t} at t = s equals v_{s,s} (the tangent condition, §2)."""
  model, params = make_mlp_model()
  v = model.bind(params)
  t = jnp.linspace(0.0, 1.0, 7)
  x = _states(6, 7, 3)
  b = fm.velocity(v, t, x)
  np.testing.assert_array_equal(b, v(t, t, x))
  assert jnp.min(jnp.abs(b)) > 0  # not trivially zero
  X, dX_dt = fm.flow_map_and_dt(v, t, t, x)
  np.testing.assert_array_equal(X, x)
  np.testing.assert_allclose(dX_dt, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_exact_v_reproduces_the_closed_form(name, make_gaussian_flow, make_times_below, x64):
  """GaussianFlow.v through the shared parameterisation gives the closed-form X off the diagonal,
  b_t on it, and is continuous across the diagonal."""
  gf = make_gaussian_flow(name, 0.7)
  s, t = make_times_below(7, 32)
  x = _states(8, 32, 3)
  np.testing.assert_allclose(fm.flow_map(gf.v, s, t, x), gf.flow_map(s, t, x), rtol=1e-13,
                             atol=1e-13)
  np.testing.assert_allclose(fm.velocity(gf.v, t, x), gf.velocity(t, x), rtol=0, atol=0)
  for gap in (1e-3, 1e-5):
    np.testing.assert_allclose(gf.v(s, s + gap, x), gf.velocity(s, x), atol=20 * gap)


# --- (c) the jvp derivatives of a network agree with finite differences -------------------------


def test_jvp_derivatives_match_finite_differences(make_mlp_model, make_times_below, x64):
  """flow_map_and_dt / _ds / _dx (one jvp each, §3) against central differences."""
  model, params = make_mlp_model(width=32, depth=3, sigma0=0.7)
  v = model.bind(params)
  s, t = make_times_below(9, 16)
  x = _states(9, 16, 3)
  dx = _states(10, 16, 3)
  eps = 1e-6

  @jax.jit
  def jvps_and_central_differences(s, t, x, dx):
    X = fm.flow_map(v, s, t, x)
    jvps = (fm.flow_map_and_dt(v, s, t, x), fm.flow_map_and_ds(v, s, t, x),
            fm.flow_map_and_dx(v, s, t, x, dx))
    X_ = lambda s, t, x: fm.flow_map(v, s, t, x)
    central = ((X_(s, t + eps, x) - X_(s, t - eps, x)) / (2 * eps),
               (X_(s + eps, t, x) - X_(s - eps, t, x)) / (2 * eps),
               (X_(s, t, x + eps * dx) - X_(s, t, x - eps * dx)) / (2 * eps))
    return X, jvps, central

  X, ((X_t, dX_dt), (X_s, dX_ds), (X_x, dX_dx)), (central_t, central_s, central_x) = (
      jvps_and_central_differences(s, t, x, dx))
  for primal in (X_t, X_s, X_x):
    np.testing.assert_allclose(primal, X, rtol=1e-14, atol=1e-15)
  for jvp, central in ((dX_dt, central_t), (dX_ds, central_s), (dX_dx, central_x)):
    assert jnp.max(jnp.abs(jvp)) > 1e-2
    np.testing.assert_allclose(jvp, central, rtol=1e-7, atol=1e-8)
  # Each sample's derivative is its own: perturbing one sample's t moves only that row.
  one_row = jnp.zeros(16).at[3].set(eps)
  moved = fm.flow_map(v, s, t + one_row, x) - fm.flow_map(v, s, t, x)
  assert jnp.all(moved[jnp.arange(16) != 3] == 0)


# --- (d) the N-step sampler on the exact map -----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sampler_with_exact_map_is_step_count_independent(name, make_gaussian_flow, x64):
  """With the exact map, 1 step and 4 steps (and an uneven grid) agree to round-off (semigroup)."""
  gf = make_gaussian_flow(name, 0.7)
  x0 = gf.interpolant.sigma0 * _default(np.random.default_rng(10).normal(size=(64, 3)))
  one = fm.sample(gf.v, x0, jnp.linspace(0.0, 1.0, 2))
  four = fm.sample(gf.v, x0, jnp.linspace(0.0, 1.0, 5))
  uneven = fm.sample(gf.v, x0, jnp.array([0.0, 0.05, 0.5, 0.6, 1.0]))
  np.testing.assert_allclose(one, gf.flow_map(jnp.zeros(64), jnp.ones(64), x0), atol=1e-12)
  np.testing.assert_allclose(four, one, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(uneven, one, rtol=1e-12, atol=1e-12)
  assert jnp.max(jnp.abs(one - x0)) > 0.5


@pytest.mark.parametrize("name", NAMES)
def test_sampler_maps_noise_to_data_statistics(name, make_gaussian_flow, x64):
  """Samples from N(0, sigma0^2 I) through the 4-step exact map have the data mean and covariance
  within 5 Monte Carlo standard errors."""
  n = 20_000
  gf = make_gaussian_flow(name, 0.7)
  x0 = gf.interpolant.sigma0 * _default(np.random.default_rng(11).normal(size=(n, 3)))
  x1 = np.asarray(fm.sample(gf.v, x0, jnp.linspace(0.0, 1.0, 5)))
  mu, cov = np.asarray(gf.mean), np.asarray(gf.cov)
  mean_se = np.sqrt(np.diag(cov) / n)
  cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
  assert np.all(np.abs(x1.mean(0) - mu) < 5 * mean_se)
  assert np.all(np.abs(np.cov(x1.T) - cov) < 5 * cov_se)
  # The noise itself is far from the target: the tolerance separates the two.
  assert np.any(np.abs(np.asarray(x0).mean(0) - mu) > 20 * mean_se)
