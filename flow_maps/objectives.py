"""Self-distillation objectives as pure functions: diagonal, LSD, ESD, PSD (`docs/method.md` §3-4).

Each residual takes the student's velocity field `v` (a function (s, t, x) -> v_{s,t}(x), see
`flow_map.py`), the teacher's `v_teacher`, times, the states and a stop-gradient placement, and
returns R per sample, |.|^2 summed over every coordinate of the sample.

Stop-gradient placements:
  - "teacher": every teacher evaluation is a constant, and so are the inputs it is evaluated at.
    Published for LSD and PSD. There the whole target is teacher output, so "full" is the same
    placement and is accepted as such.
  - "full": in ESD, the spatial term grad_x X . b is a constant as well as b (published for ESD).
  - "none": no stop-gradient; with the online parameters as teacher, gradients flow through it.

The teacher is whatever velocity field the caller passes: the online parameters (published), an
EMA, or a frozen, separately trained model (distillation, `docs/method.md` §3).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from flow_maps import flow_map as fm
from flow_maps import times as times_lib
from flow_maps.interpolants import Interpolant, per_sample

Array = jax.Array
sg = jax.lax.stop_gradient

OBJECTIVES = ("flow_matching", "lsd", "esd", "psd")
STOP_GRADIENTS = ("teacher", "full", "none")


def squared_norm(x: Array) -> Array:
  """|x|^2 per sample: summed over every axis but the first."""
  return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


def _teacher_input(x: Array, stop_gradient: str) -> Array:
  return x if stop_gradient == "none" else sg(x)


def _teacher_output(y: Array, stop_gradient: str) -> Array:
  return y if stop_gradient == "none" else sg(y)


def diagonal_residual(v: fm.VelocityField, t: Array, x0: Array, x1: Array,
                      interpolant: Interpolant) -> Array:
  """Flow matching on s = t: R = |v_{t,t}(I_t) - dI_t|^2."""
  It = interpolant.interpolate(t, x0, x1)
  return squared_norm(fm.velocity(v, t, It) - interpolant.time_derivative(t, x0, x1))


def lagrangian_residual(v: fm.VelocityField, v_teacher: fm.VelocityField, s: Array, t: Array,
                        x: Array, stop_gradient: str = "teacher") -> Array:
  """LSD: R = |d/dt X_{s,t}(x) - sg[v_{t,t}(sg X_{s,t}(x))]|^2."""
  X, dX_dt = fm.flow_map_and_dt(v, s, t, x)
  target = fm.velocity(v_teacher, t, _teacher_input(X, stop_gradient))
  return squared_norm(dX_dt - _teacher_output(target, stop_gradient))


def eulerian_residual(v: fm.VelocityField, v_teacher: fm.VelocityField, s: Array, t: Array,
                      x: Array, stop_gradient: str = "full") -> Array:
  """ESD: R = |d/ds X_{s,t}(x) + sg[grad_x X_{s,t}(x) . v_{s,s}(x)]|^2.

  "full" (published) stops the gradient through the whole spatial term, "teacher" through the
  velocity v_{s,s} only, "none" nowhere. The spatial term is the student's own map.

  Cost per row in network passes, backward included: with "full" the two terms need their own
  tangents (only d/ds X is differentiated) on one shared primal, 8; otherwise their sum is one
  jvp in (s, x) with tangent (1, b), 7 ("none": 9, the teacher's backward added).
  """
  b = _teacher_output(fm.velocity(v_teacher, s, x), stop_gradient)
  if stop_gradient == "full":
    _, dX_ds, transport = fm.flow_map_and_partials(v, s, t, x, b)
    return squared_norm(dX_ds + sg(transport))
  _, dX = fm.flow_map_and_eulerian_derivative(v, s, t, x, b)
  return squared_norm(dX)


def progressive_residual(v: fm.VelocityField, v_teacher: fm.VelocityField, s: Array, t: Array,
                         h: Array, x: Array, stop_gradient: str = "teacher") -> Array:
  """PSD with u = h s + (1 - h) t:
  R = |v_{s,t}(x) - sg[(1 - h) v_{s,u}(x) + h v_{u,t}(X_{s,u}(x))]|^2,
  that is |X_{s,t}(x) - sg X_{u,t}(X_{s,u}(x))|^2 / (t - s)^2.
  """
  u = h * s + (1.0 - h) * t
  x_in = _teacher_input(x, stop_gradient)
  v_su = v_teacher(s, u, x_in)
  X_su = x_in + per_sample(u - s, x) * v_su
  v_ut = v_teacher(u, t, X_su)
  hb = per_sample(h, x)
  target = _teacher_output((1.0 - hb) * v_su + hb * v_ut, stop_gradient)
  return squared_norm(v(s, t, x) - target)


@dataclasses.dataclass(frozen=True)
class Objective:
  """Which loss to train: built once from the config, static under jit."""

  name: str = "lsd"
  stop_gradient: str = "teacher"
  diagonal_fraction: float = 0.75
  psd_h: str = "uniform"

  def __post_init__(self):
    if self.name not in OBJECTIVES:
      raise ValueError(f"objective.name: unknown objective {self.name!r}; allowed: {OBJECTIVES}")
    if self.stop_gradient not in STOP_GRADIENTS:
      raise ValueError(f"objective.stop_gradient: unknown placement {self.stop_gradient!r}; "
                       f"allowed: {STOP_GRADIENTS}")
    if self.psd_h not in ("uniform", "midpoint"):
      raise ValueError(f"objective.psd_h: must be 'uniform' or 'midpoint', got {self.psd_h!r}")
    if self.name == "flow_matching" and self.diagonal_fraction != 1.0:
      raise ValueError("objective.diagonal_fraction: flow_matching trains on the diagonal only, "
                       f"so it must be 1.0, got {self.diagonal_fraction}")
    try:
      times_lib.diagonal_layout(self.diagonal_fraction)
    except ValueError as e:
      raise ValueError(f"objective.diagonal_fraction: {e}") from None

  @property
  def layout(self) -> times_lib.Layout:
    return times_lib.diagonal_layout(self.diagonal_fraction)

  def off_diagonal_residual(self, v, v_teacher, times: times_lib.OffDiagonalTimes,
                            x: Array) -> Array:
    if self.name == "lsd":
      return lagrangian_residual(v, v_teacher, times.s, times.t, x, self.stop_gradient)
    if self.name == "esd":
      return eulerian_residual(v, v_teacher, times.s, times.t, x, self.stop_gradient)
    if self.name == "psd":
      return progressive_residual(v, v_teacher, times.s, times.t, times.h, x, self.stop_gradient)
    raise ValueError(f"{self.name} has no off-diagonal term")


def _weighted(residual: Array, log_weight: Optional[Array]) -> Array:
  """exp(-w) R + w (`docs/method.md` §4), or R without a learned weight."""
  if log_weight is None:
    return residual
  return jnp.exp(-log_weight) * residual + log_weight


def loss(model: fm.FlowMapModel, params: Any, x1: Array, key: Array, *,
         objective: Objective, interpolant: Interpolant, teacher_params: Any = None,
         gap: Array = 1.0, train: bool = True) -> tuple[Array, dict[str, Array]]:
  """The self-distillation loss of one batch of data x1 [B, ...] and its metrics.

  Noise, times and dropout are drawn from `key`. The batch is split into diagonal and
  off-diagonal rows by `objective.layout` (see `times.py`); the loss is the mean over all rows of
  the per-row (weighted) residual. `teacher_params` defaults to the online `params`; `gap` is the
  annealed largest t - s.
  """
  key_noise, key_diag, key_off, key_dropout = jax.random.split(key, 4)
  dtype = x1.dtype
  batch = x1.shape[0]
  x0 = interpolant.sigma0 * jax.random.normal(key_noise, x1.shape, dtype)
  v = model.bind(params, key_dropout if train else None)
  if teacher_params is None:
    teacher_params = params
  if objective.stop_gradient != "none":
    teacher_params = sg(teacher_params)
  v_teacher = model.bind(teacher_params)

  layout = objective.layout
  n_diag, n_off = layout.counts(batch)
  x0_d, x0_o = layout.split(x0)
  x1_d, x1_o = layout.split(x1)
  metrics = {}
  total = jnp.zeros((), jnp.float32)

  if n_diag:
    t = times_lib.sample_diagonal_times(key_diag, n_diag, dtype)
    R = diagonal_residual(v, t, x0_d, x1_d, interpolant)
    w = model.log_weight(params, t, t) if model.learns_weight else None
    total += jnp.sum(_weighted(R, w))
    metrics["diagonal"] = jnp.mean(R)
  if n_off:
    times = times_lib.sample_off_diagonal_times(key_off, n_off, gap, objective.psd_h, dtype)
    Is = interpolant.interpolate(times.s, x0_o, x1_o)
    R = objective.off_diagonal_residual(v, v_teacher, times, Is)
    w = model.log_weight(params, times.s, times.t) if model.learns_weight else None
    total += jnp.sum(_weighted(R, w))
    metrics[objective.name] = jnp.mean(R)
  total = total / batch
  metrics["loss"] = total
  return total, metrics
