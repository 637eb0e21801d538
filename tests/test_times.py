"""Time sampling: the diagonal layout, the triangle s <= t, annealing and PSD's h (`docs/method.md` §4).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flow_maps import times

N_SAMPLES = 100_000
KS_P_MIN = 1e-3  # fixed seeds: a right law passes with p well above this, a wrong one far below


@st.composite
def layouts(draw):
  period = draw(st.integers(1, times.MAX_PERIOD))
  return period, draw(st.integers(0, period))


@jax.jit
def _triangle(key, gap):
  return times.sample_triangle(key, N_SAMPLES, gap)


# --- the diagonal layout --------------------------------------------------------------------------


@pytest.mark.parametrize("fraction,period,diagonal_per_period", [
    (0.75, 4, 3), (0.5, 2, 1), (0.0, 1, 0), (1.0, 1, 1), (0.9, 10, 9), (1 / 3, 3, 1)])
def test_diagonal_layout_is_the_shortest_exact_period(fraction, period, diagonal_per_period):
  layout = times.diagonal_layout(fraction)
  assert layout == times.Layout(period, diagonal_per_period)
  assert layout.fraction == fraction


@pytest.mark.parametrize("fraction", (0.123456789, 1.5, -0.25, 1 / 67))
def test_diagonal_layout_rejects_inexact_or_out_of_range_fractions(fraction):
  with pytest.raises(ValueError, match="diagonal fraction"):
    times.diagonal_layout(fraction)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_every_fraction_k_over_p_is_realised_exactly(period_and_k):
  """k / P with P <= 64 gives the reduced fraction: the same float and the smallest period."""
  period, k = period_and_k
  layout = times.diagonal_layout(k / period)
  assert layout.fraction == k / period
  assert layout.period == period // math.gcd(k, period)
  assert layout.diagonal_per_period * period == k * layout.period


@settings(max_examples=12, deadline=None)
@given(layouts(), st.integers(1, 4), st.sampled_from([(), (2, 3)]))
def test_split_and_merge_are_inverse(period_and_k, periods, trailing):
  """split gives the counted rows, the diagonal ones being where is_diagonal holds, in batch
  order; merge undoes it."""
  period, k = period_and_k
  layout = times.diagonal_layout(k / period)
  batch = periods * layout.period
  x = np.arange(batch * int(np.prod(trailing)), dtype=np.float32).reshape((batch,) + trailing)
  diag, off = layout.split(x)
  assert (len(diag), len(off)) == layout.counts(batch)
  mask = np.asarray(layout.is_diagonal(batch))
  np.testing.assert_array_equal(diag, x[mask])
  np.testing.assert_array_equal(off, x[~mask])
  np.testing.assert_array_equal(layout.merge(diag, off), x)


def test_split_rejects_partial_periods():
  with pytest.raises(ValueError, match="period"):
    times.diagonal_layout(0.75).split(np.zeros((10, 2)))


@pytest.mark.parametrize("fraction", (0.75, 0.5, 0.9, 0.0, 1.0))
def test_fraction_holds_on_every_contiguous_shard(fraction):
  """§4's pitfall: with the batch cut into 4 contiguous per-device blocks, each block keeps the
  diagonal fraction exactly, and splitting block by block gives the global split."""
  layout = times.diagonal_layout(fraction)
  devices, batch = 4, 4 * 3 * layout.period
  x = np.arange(batch)
  mask = np.asarray(layout.is_diagonal(batch))
  shards, shard_masks = x.reshape(devices, -1), mask.reshape(devices, -1)
  diag_global, off_global = layout.split(x)
  diag_parts, off_parts = [], []
  for shard, shard_mask in zip(shards, shard_masks):
    assert shard_mask.sum() == fraction * len(shard)
    diag, off = layout.split(shard)
    assert len(diag) == fraction * len(shard)
    np.testing.assert_array_equal(diag, shard[shard_mask])
    diag_parts.append(diag)
    off_parts.append(off)
  np.testing.assert_array_equal(np.concatenate(diag_parts), diag_global)
  np.testing.assert_array_equal(np.concatenate(off_parts), off_global)


def test_diagonal_first_layout_would_fail_the_shard_check():
  """The check above can fail: the published diagonal-first layout leaves whole shards without
  an off-diagonal row."""
  batch, devices = 48, 4
  diagonal_first = np.arange(batch) < 0.75 * batch
  per_shard = diagonal_first.reshape(devices, -1).mean(axis=1)
  assert not np.all(per_shard == 0.75)


# --- the triangle s <= t ----------------------------------------------------------------------------


@pytest.mark.parametrize("gap", (1.0, 0.3, 0.0))
def test_triangle_samples_are_ordered_within_the_gap(gap):
  s, t = map(np.asarray, _triangle(jax.random.key(0), gap))
  assert s.dtype == np.float32 and s.shape == (N_SAMPLES,)
  assert np.all(0 <= s) and np.all(s <= t) and np.all(t <= 1)
  assert np.all(t - s <= gap + 1e-6)
  if gap == 0.0:
    np.testing.assert_array_equal(s, t)
  else:
    assert np.max(t - s) > 0.95 * gap  # the whole allowed range is used


def test_full_triangle_has_uniform_triangle_marginals():
  """gap = 1: (s, t) ~ (min, max) of two uniforms: E[s] = 1/3, E[t] = 2/3 within 5 standard
  errors, and the marginal laws F_s(x) = 1 - (1 - x)^2, F_t(x) = x^2 pass a KS test, both
  against the formula and against min/max of numpy uniforms."""
  s, t = map(np.asarray, _triangle(jax.random.key(1), 1.0))
  standard_error = np.sqrt(1 / 18 / N_SAMPLES)  # Var(min) = Var(max) = 1/18
  assert abs(s.mean() - 1 / 3) < 5 * standard_error
  assert abs(t.mean() - 2 / 3) < 5 * standard_error
  assert stats.kstest(s, lambda x: 1 - (1 - x)**2).pvalue > KS_P_MIN
  assert stats.kstest(t, lambda x: x**2).pvalue > KS_P_MIN
  u = np.random.default_rng(0).uniform(size=(2, N_SAMPLES))
  assert stats.ks_2samp(s, u.min(0)).pvalue > KS_P_MIN
  assert stats.ks_2samp(t, u.max(0)).pvalue > KS_P_MIN
  # The KS test is sharp: a plain uniform (the wrong law for s) fails it.
  assert stats.kstest(s, "uniform").pvalue < 1e-10


def test_gap_limited_triangle_is_uniform_on_its_band():
  """gap < 1: uniform on {s <= t, t - s <= gap}, i.e. d = t - s has CDF (2d - d^2)/(2g - g^2)
  and, given d, s is uniform on [0, 1 - d]."""
  gap = 0.3
  s, t = map(np.asarray, _triangle(jax.random.key(2), gap))
  s, d = s.astype(np.float64), (t - s).astype(np.float64)
  assert stats.kstest(d, lambda x: (2 * x - x**2) / (2 * gap - gap**2)).pvalue > KS_P_MIN
  assert stats.kstest(s / (1 - d), "uniform").pvalue > KS_P_MIN
  assert stats.kstest(d, lambda x: x / gap).pvalue < 1e-10  # d is not uniform on [0, gap]


@pytest.mark.parametrize("gap", [1.0, 0.3])
def test_uniform_gap_law(gap):
  """uniform_gap: d = t - s uniform on [0, gap] and, given d, s uniform on [0, 1 - d]; the
  triangle's law of d is rejected (so the test can tell them apart)."""
  s, t = map(np.asarray, times.sample_uniform_gap(jax.random.key(3), N_SAMPLES, gap))
  assert np.all(s >= 0) and np.all(t <= 1 + 1e-6) and np.all(t >= s)
  s, d = s.astype(np.float64), (t - s).astype(np.float64)
  assert stats.kstest(d, lambda x: x / gap).pvalue > KS_P_MIN
  assert stats.kstest(s / (1 - d), "uniform").pvalue > KS_P_MIN
  assert stats.kstest(d, lambda x: (2 * x - x**2) / (2 * gap - gap**2)).pvalue < 1e-10
  dist = times.TimeDistribution("uniform_gap")
  off = dist.off_diagonal(jax.random.key(4), N_SAMPLES, None, gap=gap)  # its (s, t) key first
  s4, t4 = times.sample_uniform_gap(jax.random.split(jax.random.key(4))[0], N_SAMPLES, gap)
  np.testing.assert_array_equal(np.asarray(off.s), np.asarray(s4))
  np.testing.assert_array_equal(np.asarray(off.t), np.asarray(t4))


@pytest.mark.parametrize("gap", [1.0, 0.3])
def test_long_gap_law(gap):
  """long_gap: d = t - s with density 2 d / gap^2 on [0, gap], then s uniform on [0, 1 - d]; the
  uniform gap's law is rejected; TimeDistribution('long_gap') draws exactly these."""
  s, t = map(np.asarray, times.sample_long_gap(jax.random.key(3), N_SAMPLES, gap))
  assert np.all(s >= 0) and np.all(t <= 1 + 1e-6) and np.all(t >= s)
  s, d = s.astype(np.float64), (t - s).astype(np.float64)
  assert stats.kstest(d, lambda x: (x / gap) ** 2).pvalue > KS_P_MIN
  assert stats.kstest(s / (1 - d), "uniform").pvalue > KS_P_MIN
  assert stats.kstest(d, lambda x: x / gap).pvalue < 1e-10
  off = times.TimeDistribution("long_gap").off_diagonal(jax.random.key(4), N_SAMPLES, None,
                                                         gap=gap)
  s4, t4 = times.sample_long_gap(jax.random.split(jax.random.key(4))[0], N_SAMPLES, gap)
  np.testing.assert_array_equal(np.asarray(off.s), np.asarray(s4))
  np.testing.assert_array_equal(np.asarray(off.t), np.asarray(t4))


@pytest.mark.parametrize("gap", [1.0, 0.3])
def test_segment_law(gap):
  """segments: s = k / N on the grid of an N-step sampler (N from `steps`, k uniform), t - s
  uniform on [0, min(1 / N, gap)]; and segment_fraction mixes them into the base law's rows."""
  steps = (1, 2, 4)
  s, t = map(np.asarray, times.sample_segments(jax.random.key(5), N_SAMPLES, steps, gap))
  s, d = s.astype(np.float64), (t - s).astype(np.float64)
  grid = {k / n for n in steps for k in range(n)}
  starts, counts = np.unique(np.round(s, 6), return_counts=True)
  assert set(starts) == {round(g, 6) for g in grid}
  # P(s = 0) = 1/3 (1 + 1/2 + 1/4); P(s = 1/4) = 1/12.
  np.testing.assert_allclose(counts[0] / N_SAMPLES, (1 + 1 / 2 + 1 / 4) / 3, atol=0.01)
  np.testing.assert_allclose(counts[1] / N_SAMPLES, 1 / 12, atol=0.01)
  last = np.isclose(s, 0.75)  # only N = 4 starts there: d uniform on [0, min(1/4, gap)]
  assert stats.kstest(d[last], lambda x: x / min(gap, 0.25)).pvalue > KS_P_MIN
  assert stats.kstest(d[last], lambda x: x / min(gap, 0.5)).pvalue < 1e-10
  assert np.all(d >= 0) and np.all(d <= gap + 1e-6) and np.all(s + d <= 1 + 1e-6)
  mixed = times.TimeDistribution("uniform_gap", segment_fraction=0.3, segment_steps=steps)
  off = mixed.off_diagonal(jax.random.key(6), N_SAMPLES, None, gap=gap)
  on_grid = np.isin(np.round(np.asarray(off.s, np.float64), 6), [round(g, 6) for g in grid])
  np.testing.assert_allclose(on_grid.mean(), 0.3, atol=0.015)  # the base law hits it w.p. 0
  np.testing.assert_array_less(np.asarray(off.t - off.s), gap + 1e-6)


def test_max_gap_annealing_schedule():
  """0 until anneal_start, then linear to 1 over anneal_steps; 1 throughout without annealing."""
  steps = jnp.array([0, 50, 100, 150, 200, 300, 400, 10_000])
  np.testing.assert_allclose(times.max_gap(steps, 100, 200),
                             [0, 0, 0, 0.25, 0.5, 1, 1, 1], atol=1e-7)
  np.testing.assert_array_equal(times.max_gap(steps, 100, 0), 1.0)
  np.testing.assert_allclose(jax.jit(times.max_gap, static_argnums=(1, 2))(250, 100, 200), 0.75)


# --- PSD's h and the off-diagonal times ------------------------------------------------------------


def test_sample_h_uniform_and_midpoint():
  h = np.asarray(times.sample_h(jax.random.key(3), N_SAMPLES, "uniform"))
  assert np.all((0 <= h) & (h <= 1))
  assert stats.kstest(h, "uniform").pvalue > KS_P_MIN
  np.testing.assert_array_equal(times.sample_h(jax.random.key(3), 7, "midpoint"), 0.5)
  with pytest.raises(ValueError, match="psd_h"):
    times.sample_h(jax.random.key(3), 7, "random")


@pytest.mark.parametrize("psd_h", ("uniform", "midpoint"))
def test_off_diagonal_times_put_u_between_s_and_t(psd_h):
  """u = h s + (1 - h) t lies in [s, t]; PSD-M's u is the midpoint."""
  times_ = times.sample_off_diagonal_times(jax.random.key(4), 1000, 0.5, psd_h)
  s, t, h, u = (np.asarray(a) for a in (times_.s, times_.t, times_.h, times_.u))
  assert np.all(s <= u + 1e-7) and np.all(u <= t + 1e-7)
  assert np.all(t - s <= 0.5 + 1e-6)
  np.testing.assert_allclose(u, h * s + (1 - h) * t, atol=1e-7)
  if psd_h == "midpoint":
    np.testing.assert_allclose(u, (s + t) / 2, atol=1e-7)


def test_diagonal_times_are_uniform():
  t = np.asarray(times.sample_diagonal_times(jax.random.key(5), N_SAMPLES))
  assert t.dtype == np.float32
  assert stats.kstest(t, "uniform").pvalue > KS_P_MIN


@pytest.mark.parametrize("fields,needle", [
    ({"segment_fraction": 1.5}, "objective.segment_fraction"),
    ({"segment_steps": ()}, "objective.segment_steps"),
    ({"segment_steps": (1, 0)}, "objective.segment_steps"),
    ({"segment_fraction": 0.5, "times": "logit_normal"}, "segments mix into"),
])
def test_bad_segment_settings_are_named(fields, needle):
  from flow_maps import config_defaults, validation
  c = config_defaults.checkerboard("smoke")
  c.objective.update(fields)
  with pytest.raises(validation.ConfigError, match=needle):
    validation.validate(c, num_devices=1)
  c = config_defaults.checkerboard("smoke")
  c.objective.update({"segment_fraction": 0.5, "times": "long_gap"})
  validation.validate(c, num_devices=1)  # the valid neighbour passes
