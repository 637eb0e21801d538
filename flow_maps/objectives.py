"""Flow-map objectives as pure functions: one residual per characterisation, and the table of
choices that makes every known few-step method a point in it (`docs/method.md` §3-4, §8).

Each residual takes the student's velocity field `v` (a function (s, t, x) -> v_{s,t}(x), see
`flow_map.py`), the teacher's `v_teacher`, times, the states and a stop-gradient placement, and
returns R per sample, |.|^2 summed over every coordinate of the sample.

Stop-gradient placements:
  - "teacher": every teacher evaluation is a constant, and so are the inputs it is evaluated at.
    Published for LSD and PSD. There the whole target is teacher output, so "full" is the same
    placement and is accepted as such.
  - "full": in ESD, the spatial term grad_x X . b is a constant as well as b (published for ESD).
  - "none": no stop-gradient; with the online parameters as teacher, gradients flow through it.
  - "derivatives": the gradient flows through v_{s,t}(x) only; every derivative term is a
    constant (MeanFlow, sCM: `docs/method.md` §8). R is written |v - sg T|^2, same value.

The teacher is whatever velocity field the caller passes: the online parameters (published), an
EMA, or a frozen, separately trained model (distillation); the velocity that drives a target is
that teacher's diagonal, the row's own conditional velocity dI_s, or a pretrained model's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from flow_maps import flow_map as fm
from flow_maps import times as times_lib
from flow_maps.interpolants import Interpolant, per_sample

Array = jax.Array
sg = jax.lax.stop_gradient

RESIDUALS = ("diagonal", "lagrangian", "eulerian", "progressive", "discrete_eulerian")
VELOCITIES = ("self", "conditional", "pretrained")
STOP_GRADIENTS = ("teacher", "full", "none", "derivatives")
WEIGHTINGS = ("none", "learned", "adaptive")
DISTANCES = ("l2", "pseudo_huber")
DROPOUTS = ("diagonal", "all")

# The two-time (s, t) laws every residual but iCT's admits.
TWO_TIME_LAWS = ("triangle", "uniform_gap", "long_gap", "logit_normal", "dyadic")
# What each residual admits (`docs/method.md` §8): the velocity driving its target, the
# stop-gradient placements, the time distributions. The diagonal has no teacher to stop.
ADMITS = {
    "diagonal": dict(velocity=("self", "pretrained"), stop_gradient=STOP_GRADIENTS,
                     times=TWO_TIME_LAWS),
    "lagrangian": dict(velocity=("self", "pretrained"),
                       stop_gradient=("teacher", "full", "none", "derivatives"),
                       times=TWO_TIME_LAWS),
    "eulerian": dict(velocity=VELOCITIES, stop_gradient=STOP_GRADIENTS,
                     times=TWO_TIME_LAWS + ("fixed_end",)),
    "progressive": dict(velocity=("self", "pretrained"), stop_gradient=("teacher", "full", "none"),
                        times=TWO_TIME_LAWS),
    "discrete_eulerian": dict(velocity=("conditional",), stop_gradient=("teacher", "none"),
                              times=("ict_grid",)),
}


def squared_norm(x: Array) -> Array:
  """|x|^2 per sample: summed over every axis but the first."""
  return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


def _teacher_input(x: Array, stop_gradient: str) -> Array:
  return x if stop_gradient == "none" else sg(x)


def _teacher_output(y: Array, stop_gradient: str) -> Array:
  return y if stop_gradient == "none" else sg(y)


def diagonal_residual(v: fm.VelocityField, t: Array, x0: Array, x1: Array,
                      interpolant: Interpolant,
                      v_pretrained: Optional[fm.VelocityField] = None,
                      guide: Optional[Callable[[Array, Array, Array], Array]] = None) -> Array:
  """Flow matching on s = t: R = |v_{t,t}(I_t) - dI_t|^2; with a pretrained velocity b,
  velocity distillation R = |v_{t,t}(I_t) - sg b_t(I_t)|^2 (`docs/method.md` §8); `guide`
  (t, x, dI) -> target replaces dI by a guided target (`FixedGuidance`)."""
  It = interpolant.interpolate(t, x0, x1)
  if v_pretrained is None:
    target = interpolant.time_derivative(t, x0, x1)
    if guide is not None:
      target = guide(t, It, target)
  else:
    target = sg(fm.velocity(v_pretrained, t, It))
  return squared_norm(fm.velocity(v, t, It) - target)


def guided_diagonal_residual(v: fm.VelocityField, v_label: fm.VelocityField,
                             v_null: fm.VelocityField, w: Array, t: Array, x0: Array, x1: Array,
                             interpolant: Interpolant) -> Array:
  """The guided diagonal (`docs/method.md` §9): R = |v_{t,t}(I_t) - sg b^w_t(I_t)|^2 with
  b^w = b(.|null) + w (b(.|c) - b(.|null)) from the teacher fields bound to the rows' labels and
  to the null label (both at w = 1); `v` is bound to each row's own (label, w)."""
  It = interpolant.interpolate(t, x0, x1)
  b_w = sg(fm.guided_velocity(v_label, v_null, w, t, It))
  return squared_norm(fm.velocity(v, t, It) - b_w)


def lagrangian_residual(v: fm.VelocityField, v_teacher: fm.VelocityField, s: Array, t: Array,
                        x: Array, stop_gradient: str = "teacher") -> Array:
  """LSD: R = |d/dt X_{s,t}(x) - sg[v_{t,t}(sg X_{s,t}(x))]|^2.

  "derivatives": the same value as |v_{s,t} - sg[b_t(X) - (t - s) d/dt v_{s,t}]|^2, with the
  gradient through v_{s,t} only.
  """
  if stop_gradient == "derivatives":
    v_st, dv_dt = fm.velocity_and_dt(v, s, t, x)
    X = x + per_sample(t - s, x) * v_st
    target = fm.velocity(v_teacher, t, sg(X)) - per_sample(t - s, x) * dv_dt
    return squared_norm(v_st - sg(target))
  X, dX_dt = fm.flow_map_and_dt(v, s, t, x)
  target = fm.velocity(v_teacher, t, _teacher_input(X, stop_gradient))
  return squared_norm(dX_dt - _teacher_output(target, stop_gradient))


def eulerian_residual(v: fm.VelocityField, v_teacher: Optional[fm.VelocityField], s: Array,
                      t: Array, x: Array, stop_gradient: str = "full", *, b: Optional[Array] = None,
                      tangent_normalization: float = 0.0, warmup: Array = 1.0) -> Array:
  """ESD: R = |d/ds X_{s,t}(x) + sg[grad_x X_{s,t}(x) . b_s(x)]|^2, b_s = v_{s,s} of the teacher,
  or the drive `b` given (the conditional dI_s, a pretrained velocity: `docs/method.md` §8).

  "full" (published) stops the gradient through the whole spatial term, "teacher" through the
  velocity b only, "none" nowhere. The spatial term is the student's own map.
  "derivatives" (MeanFlow, sCM): R = |v_{s,t} - sg T|^2, T = b + (t - s)(d/ds v + grad_x v . b),
  the same value with the gradient through v_{s,t} only. Only there: `warmup` r scales the
  derivative term of T (sCM's tangent warm-up, in this parameterisation: r = 0 regresses v_{s,t}
  on b), and `tangent_normalization` c > 0 replaces the error E = v - T by E / (|E| + c) (sCM's
  tangent normalisation, in this parameterisation's units), so R = |E / (|E| + c)|^2.

  Cost per row in network passes, backward included: with "full" the two terms need their own
  tangents (only d/ds X is differentiated) on one shared primal, 8; otherwise their sum is one
  jvp in (s, x) with tangent (1, b), 7 ("none": 9, the teacher's backward added); "derivatives"
  differentiates the primal only, 5.
  """
  if b is None:
    b = _teacher_output(fm.velocity(v_teacher, s, x), stop_gradient)
  if stop_gradient == "derivatives":
    v_st, transport = fm.velocity_and_transport(v, s, t, x, b)
    target = b + per_sample(t - s, x) * (warmup * transport)
    if not tangent_normalization:
      return squared_norm(v_st - sg(target))
    error = sg(v_st - target)
    error = error / (per_sample(jnp.sqrt(squared_norm(error)), x) + tangent_normalization)
    return squared_norm(v_st - sg(v_st - error))
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


def discrete_eulerian_residual(v: fm.VelocityField, v_teacher: fm.VelocityField, s: Array,
                               s_target: Array, x: Array, x_target: Array,
                               stop_gradient: str = "teacher") -> Array:
  """Discrete consistency training (iCT, `docs/method.md` §8): the single-time map to data of a
  noisier point against the teacher's map of a less noisy point of the same pair (x0, x1),
  R = |X_{s,1}(I_s) - sg X_{s',1}(I_{s'})|^2 with s < s': a finite difference of the Eulerian
  residual along the conditional path."""
  one = jnp.ones_like(s)
  target = fm.flow_map(v_teacher, s_target, one, _teacher_input(x_target, stop_gradient))
  return squared_norm(fm.flow_map(v, s, one, x) - _teacher_output(target, stop_gradient))


def pseudo_huber(R: Array, c: Array) -> Array:
  """sqrt(R + c^2) - c: iCT's distance for R = |a - b|^2."""
  return jnp.sqrt(R + c * c) - c


@dataclasses.dataclass(frozen=True)
class Objective:
  """Which loss to train: a point in the five choices of `docs/method.md` §8, built once from the
  config and static under jit.

  residual: the characterisation (diagonal = flow matching only, lagrangian, eulerian,
    progressive, discrete_eulerian = iCT's finite difference); velocity: what drives the target
    and the Eulerian tangent (self = the teacher's own diagonal, conditional = dI_s of the row's
    own pair, pretrained = a frozen flow model); stop_gradient: the placement (module docstring);
    times: the (s, t) distribution (`times.TimeDistribution`); weighting: per row, none, learned
    (exp(-w) L + w) or adaptive (MeanFlow's sg[(L + c)^-p] L).
  """

  residual: str = "lagrangian"
  velocity: str = "self"
  stop_gradient: str = "teacher"
  times: times_lib.TimeDistribution = times_lib.TimeDistribution()
  weighting: str = "none"
  diagonal_fraction: float = 0.75
  adaptive_p: float = 1.0
  adaptive_c: float = 1e-3
  distance: str = "l2"
  pseudo_huber_c: Optional[float] = None  # None: iCT's 0.00054 sqrt(dimension)
  tangent_normalization: float = 0.0
  tangent_warmup_steps: int = 0
  # Where the student runs with dropout: "diagonal" (the release: the flow-matching term only,
  # every off-diagonal student and teacher evaluation deterministic) or "all" (the off-diagonal
  # student too, with its own key). Teachers are always deterministic.
  dropout: str = "diagonal"

  def __post_init__(self):
    def choice(field, value, allowed):
      if value not in allowed:
        raise ValueError(f"objective.{field}: unknown value {value!r}; allowed: "
                         f"{', '.join(map(repr, allowed))}")

    choice("residual", self.residual, RESIDUALS)
    choice("velocity", self.velocity, VELOCITIES)
    choice("stop_gradient", self.stop_gradient, STOP_GRADIENTS)
    choice("weighting", self.weighting, WEIGHTINGS)
    choice("distance", self.distance, DISTANCES)
    choice("dropout", self.dropout, DROPOUTS)
    admits = ADMITS[self.residual]
    for field in ("velocity", "stop_gradient"):
      if getattr(self, field) not in admits[field]:
        raise ValueError(f"objective.{field}: {getattr(self, field)!r} does not apply to the "
                         f"{self.residual} residual; allowed there: "
                         f"{', '.join(map(repr, admits[field]))}")
    if self.times.name not in admits["times"]:
      raise ValueError(f"objective.times: {self.times.name!r} does not apply to the "
                       f"{self.residual} residual; allowed there: "
                       f"{', '.join(map(repr, admits['times']))}")
    if self.residual == "diagonal" and self.diagonal_fraction != 1.0:
      raise ValueError("objective.diagonal_fraction: the diagonal residual trains on s = t only, "
                       f"so it must be 1.0, got {self.diagonal_fraction}")
    derivative_options = self.tangent_normalization or self.tangent_warmup_steps
    if derivative_options and (self.residual, self.stop_gradient) != ("eulerian", "derivatives"):
      raise ValueError("objective.tangent_normalization / tangent_warmup_steps: only for the "
                       "eulerian residual with stop_gradient='derivatives' (sCM), got "
                       f"{self.residual} with {self.stop_gradient!r}")
    if self.tangent_normalization < 0 or self.tangent_warmup_steps < 0:
      raise ValueError("objective.tangent_normalization and tangent_warmup_steps must be >= 0")
    try:
      times_lib.diagonal_layout(self.diagonal_fraction)
    except ValueError as e:
      raise ValueError(f"objective.diagonal_fraction: {e}") from None

  @property
  def layout(self) -> times_lib.Layout:
    return times_lib.diagonal_layout(self.diagonal_fraction)

  def warmup(self, step: Array) -> Array:
    """sCM's tangent warm-up factor r in [0, 1] at a step (1 without warm-up)."""
    if not self.tangent_warmup_steps:
      return 1.0
    return jnp.clip(jnp.asarray(step, jnp.float32) / self.tangent_warmup_steps, 0.0, 1.0)

  def off_diagonal_residual(self, v, v_teacher, v_drive, times: times_lib.OffDiagonalTimes,
                            x0: Array, x1: Array, interpolant: Interpolant,
                            step: Array = 0, guide=None) -> Array:
    """R per off-diagonal row; `v_drive` is the field whose diagonal drives the target (the
    teacher itself, or a pretrained model); `guide` (s, x, dI) -> target replaces the
    conditional velocity dI by a guided one (`FixedGuidance`)."""
    s, t = times.s, times.t
    x = interpolant.interpolate(s, x0, x1)
    if self.residual == "lagrangian":
      return lagrangian_residual(v, v_drive, s, t, x, self.stop_gradient)
    if self.residual == "eulerian":
      b = None
      if self.velocity == "conditional":
        b = interpolant.time_derivative(s, x0, x1)
        if guide is not None:
          b = guide(s, x, b)
      return eulerian_residual(v, v_drive, s, t, x, self.stop_gradient, b=b,
                               tangent_normalization=self.tangent_normalization,
                               warmup=self.warmup(step))
    if self.residual == "progressive":
      return progressive_residual(v, v_teacher, s, t, times.h, x, self.stop_gradient)
    if self.residual == "discrete_eulerian":
      x_target = interpolant.interpolate(times.s_target, x0, x1)
      return discrete_eulerian_residual(v, v_teacher, s, times.s_target, x, x_target,
                                        self.stop_gradient)
    raise ValueError(f"{self.residual} has no off-diagonal term")

  def row_loss(self, R: Array, dimension: int, time_weight: Any = 1.0,
               log_weight: Optional[Array] = None) -> Array:
    """The per-row loss of a residual: distance, the time distribution's weight, then the
    per-row weighting (`docs/method.md` §4, §8 (e))."""
    if self.distance == "pseudo_huber":
      c = self.pseudo_huber_c if self.pseudo_huber_c is not None else 0.00054 * dimension**0.5
      R = pseudo_huber(R, c)
    L = time_weight * R
    if self.weighting == "learned":
      return jnp.exp(-log_weight) * L + log_weight
    if self.weighting == "adaptive":
      return sg(jnp.power(L + self.adaptive_c, -self.adaptive_p)) * L
    return L


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """Labels and learned guidance (`docs/method.md` §9), static under jit.

  Each row's label becomes the null label (index num_classes) with probability label_dropout.
  With learned guidance every row also draws w uniformly from [w_min, w_max] (w = 1 on null rows,
  where it has no effect); a `guided_fraction` of the diagonal rows (the first k of every period
  of `guided_layout`, so the same share on every device) learn b^w at their w, with their label
  kept; the other diagonal rows are flow matching at w = 1, with their label dropped or not.
  """

  num_classes: int
  label_dropout: float = 0.1
  learned_guidance: bool = False
  w_min: float = 0.0
  w_max: float = 4.0
  guided_fraction: float = 0.5
  # MeanFlow's guidance built into a conditional-velocity target (0: off): on labelled rows
  # dI becomes omega dI + kappa sg b(.|c) + (1 - omega - kappa) sg b(.|null), from the
  # teacher's diagonal; the map then learns the guided flow of scale omega / (1 - kappa).
  fixed_omega: float = 0.0
  fixed_kappa: float = 0.0

  @property
  def guided_layout(self) -> times_lib.Layout:
    """Which diagonal rows learn the guided velocity (`times.diagonal_layout` of the fraction)."""
    return times_lib.diagonal_layout(self.guided_fraction)

  @property
  def map_scale(self) -> float:
    """The guidance scale the map learns without a w input: 1 (the conditional model), or
    MeanFlow's effective omega / (1 - kappa)."""
    if not self.fixed_omega:
      return 1.0
    return self.fixed_omega / (1.0 - self.fixed_kappa)

  def fixed_guide(self, v_label: fm.VelocityField, v_null: fm.VelocityField, dropped: Array):
    """The `guide` of MeanFlow's fixed guidance: (t, x, dI) -> omega dI + kappa sg b(x|c) +
    (1 - omega - kappa) sg b(x|null) on labelled rows, dI on rows whose label was dropped."""
    omega, kappa = self.fixed_omega, self.fixed_kappa

    def guide(t, x, dI):
      target = omega * dI + (1.0 - omega - kappa) * sg(fm.velocity(v_null, t, x))
      if kappa:
        target = target + kappa * sg(fm.velocity(v_label, t, x))
      return jnp.where(per_sample(dropped, x), dI, target)

    return guide

  def draw(self, key: Array, labels: Array, dtype) -> tuple[fm.Condition, Array]:
    """(each row's condition after label dropout, and w when guidance is learned; the rows'
    own w even where dropped), for labels [B]."""
    key_drop, key_w = jax.random.split(key)
    batch = labels.shape[0]
    dropped = jax.random.uniform(key_drop, (batch,)) < self.label_dropout
    label = jnp.where(dropped, self.num_classes, labels).astype(jnp.int32)
    if not self.learned_guidance:
      return fm.Condition(label), jnp.ones((batch,), dtype)
    w = jax.random.uniform(key_w, (batch,), dtype, self.w_min, self.w_max)
    return fm.Condition(label, jnp.where(dropped, jnp.ones_like(w), w)), w


def conditioning_from_config(config: Any, num_classes: int) -> Optional[Conditioning]:
  """The Conditioning of a config's data.conditional and guidance sections; None if
  unconditional."""
  if not config.data.get("conditional", False):
    return None
  g = config.guidance
  return Conditioning(num_classes=num_classes, label_dropout=config.data.label_dropout,
                      learned_guidance=g.learned, w_min=g.w_min, w_max=g.w_max,
                      guided_fraction=g.fraction, fixed_omega=g.fixed_omega,
                      fixed_kappa=g.fixed_kappa)


@dataclasses.dataclass(frozen=True)
class GuidedTeacher:
  """A frozen conditional flow model in distillation's teacher slot (`docs/method.md` §9).

  `field(condition)` is its guided velocity at each row's (label, w):
  b^w = b(.|null) + w (b(.|c) - b(.|null)), from two evaluations of the teacher at w = 1 (label c
  and the null label); a row whose label was dropped gets b(.|null). Without a w (a student that
  does not learn guidance) it is b(.|c), one evaluation. A teacher that itself learned guidance
  is still called at w = 1 twice, not once at w: its diagonal at w = 1 is trained by flow
  matching on every step, its guided diagonal is a regression on that same combination (a
  second approximation), and this is the guided field its own guided ODE integrates. `scale` W
  is the guidance its diagonal at c learned (MeanFlow's fixed guidance, else 1), undone by
  using w / W. With no condition at all (an unconditional student) it is b(.|null).
  """

  model: fm.FlowMapModel
  params: Any
  scale: float = 1.0

  def _bind(self, label: Array, dtype) -> fm.VelocityField:
    one = jnp.ones(label.shape, dtype) if self.model.learns_guidance else None
    return self.model.bind(self.params, condition=fm.Condition(label, one))

  def field(self, condition: Optional[fm.Condition]) -> fm.VelocityField:
    """The teacher's velocity for rows under `condition` (None: the null label), as a field
    (s, t, x) -> v: read on its diagonal only, b_t = v_{t,t}, like every pretrained velocity."""

    def v(s, t, x):
      null = jnp.full((x.shape[0],), self.model.num_classes, jnp.int32)
      if condition is None:
        return self._bind(null, x.dtype)(s, t, x)
      label, w = condition
      if w is None and self.scale == 1.0:
        return self._bind(label, x.dtype)(s, t, x)
      b_null = self._bind(null, x.dtype)(s, t, x)
      scale = (1.0 if w is None else w) / self.scale
      return b_null + per_sample(scale, x) * (self._bind(label, x.dtype)(s, t, x) - b_null)

    return v


def _rows(condition: Optional[fm.Condition], rows: Any) -> Optional[fm.Condition]:
  """A condition's rows of one part of the layout (`rows`: Layout.split's first or second)."""
  if condition is None:
    return None
  return fm.Condition(*(None if c is None else rows(c) for c in condition))


def loss(model: fm.FlowMapModel, params: Any, x1: Array, key: Array, *,
         objective: Objective, interpolant: Interpolant, teacher_params: Any = None,
         pretrained: Optional[fm.VelocityField | GuidedTeacher] = None, gap: Array = 1.0,
         step: Array = 0, train: bool = True, labels: Optional[Array] = None,
         conditioning: Optional[Conditioning] = None) -> tuple[Array, dict[str, Array]]:
  """The loss of one batch of data x1 [B, ...] and its metrics.

  Noise, times and dropout masks are drawn from `key` (`objective.dropout` says which terms
  run the student with dropout; the diagonal's and the off-diagonal's masks come from
  independent keys). The batch is split into diagonal and
  off-diagonal rows by `objective.layout` (see `times.py`); the loss is the mean over all rows of
  the per-row loss. `teacher_params` defaults to the online `params`; `pretrained` is the frozen
  velocity field of `objective.velocity = 'pretrained'`; `gap` is the annealed largest t - s;
  `step` the optimiser step (iCT's curriculum, sCM's warm-up). A conditional run passes the
  batch's `labels` [B] and its `conditioning` (label dropout and guidance, drawn from a key of
  their own, so that the unconditional draws are unchanged). A conditional pretrained model
  comes as a `GuidedTeacher`: every teacher slot then takes its guided velocity at the row's
  label and w (its null velocity for an unconditional student), and every diagonal row regresses
  on it.
  """
  if (objective.velocity == "pretrained") != (pretrained is not None):
    raise ValueError("objective.velocity: a pretrained velocity field is needed exactly when "
                     f"velocity='pretrained' (got velocity={objective.velocity!r})")
  if (labels is None) != (conditioning is None):
    raise ValueError("labels and conditioning go together: both or neither")
  if conditioning is not None and pretrained is not None and not isinstance(pretrained,
                                                                             GuidedTeacher):
    raise ValueError("a conditional run distils a conditional teacher (a GuidedTeacher), got "
                     "an unconditional velocity field")
  key_noise, key_diag, key_off, key_dropout = jax.random.split(key, 4)
  key_dropout_diag, key_dropout_off = jax.random.split(key_dropout)  # independent masks
  dtype = x1.dtype
  batch = x1.shape[0]
  dimension = math.prod(x1.shape[1:])
  x0 = interpolant.noise(key_noise, x1.shape, dtype)
  if teacher_params is None:
    teacher_params = params
  if objective.stop_gradient != "none":
    teacher_params = sg(teacher_params)
  learned = objective.weighting == "learned"

  layout = objective.layout
  n_diag, n_off = layout.counts(batch)
  x0_d, x0_o = layout.split(x0)
  x1_d, x1_o = layout.split(x1)
  cond_d = cond_o = None
  if conditioning is not None:
    condition, w_rows = conditioning.draw(jax.random.fold_in(key, 0xC1A55), labels, dtype)
    cond_d, cond_o = _rows(condition, lambda a: layout.split(a)[0]), _rows(
        condition, lambda a: layout.split(a)[1])

  def fixed_guide(cond):
    """MeanFlow's fixed-guidance target on these rows (None without it)."""
    if conditioning is None or not conditioning.fixed_omega:
      return None
    rows = cond.label.shape[0]
    return conditioning.fixed_guide(
        model.bind(teacher_params, condition=cond),
        model.bind(teacher_params, condition=model.null_condition(rows, dtype)),
        cond.label == conditioning.num_classes)

  def drive(cond):
    """The pretrained velocity for these rows (None without one)."""
    if isinstance(pretrained, GuidedTeacher):
      return pretrained.field(cond)
    return pretrained

  metrics = {}
  total = jnp.zeros((), jnp.float32)

  if n_diag:
    t = objective.times.diagonal(key_diag, n_diag, dtype)
    if conditioning is not None and conditioning.learned_guidance and pretrained is None:
      # Guided rows g (label kept, their w) and flow-matching rows f (label dropped or not, w = 1).
      split = conditioning.guided_layout.split
      (x0_g, x0_f), (x1_g, x1_f), (t_g, t_f) = split(x0_d), split(x1_d), split(t)
      label_g, w_g = split(layout.split(labels)[0])[0], split(layout.split(w_rows)[0])[0]
      label_f = split(cond_d.label)[1]
      one_g, one_f = jnp.ones_like(w_g), jnp.ones(label_f.shape, dtype)
      key_g = jax.random.fold_in(key_dropout_diag, 1) if train else None
      R_g = guided_diagonal_residual(
          model.bind(params, key_g, fm.Condition(label_g, w_g)),
          model.bind(teacher_params, condition=fm.Condition(label_g, one_g)),
          model.bind(teacher_params, condition=model.null_condition(label_g.shape[0], dtype)),
          w_g, t_g, x0_g, x1_g, interpolant)
      R_f = diagonal_residual(
          model.bind(params, key_dropout_diag if train else None,
                     fm.Condition(label_f, one_f)), t_f, x0_f, x1_f, interpolant)
      R = conditioning.guided_layout.merge(R_g, R_f)
      metrics["guided_diagonal"] = jnp.mean(R_g)
    else:
      v_diag = model.bind(params, key_dropout_diag if train else None, cond_d)
      R = diagonal_residual(v_diag, t, x0_d, x1_d, interpolant, drive(cond_d),
                            guide=fixed_guide(cond_d))
    w = model.log_weight(params, t, t) if learned else None
    total += jnp.sum(objective.row_loss(R, dimension, log_weight=w))
    metrics["diagonal"] = jnp.mean(R)
  if n_off:
    v = model.bind(params, key_dropout_off if train and objective.dropout == "all" else None,
                   cond_o)
    v_teacher = model.bind(teacher_params, condition=cond_o)
    v_drive = v_teacher if pretrained is None else drive(cond_o)
    times = objective.times.off_diagonal(key_off, n_off, interpolant, gap=gap, step=step,
                                         dtype=dtype)
    R = objective.off_diagonal_residual(v, v_teacher, v_drive, times, x0_o, x1_o, interpolant,
                                        step, guide=fixed_guide(cond_o))
    w = model.log_weight(params, times.s, times.t) if learned else None
    total += jnp.sum(objective.row_loss(R, dimension, times.weight, w))
    metrics[objective.residual] = jnp.mean(R)
  total = total / batch
  metrics["loss"] = total
  return total, metrics


def from_config(objective_config: Any, total_steps: int = 1) -> Objective:
  """The Objective of a config's `objective` section (`config_defaults.common`); `total_steps`
  is the run's length (iCT's curriculum). Raises ValueError naming the field."""
  oc = objective_config
  times = times_lib.TimeDistribution(
      name=oc.times, psd_h=oc.psd_h, logit_normal_mean=oc.logit_normal_mean,
      logit_normal_std=oc.logit_normal_std, dyadic_levels=oc.dyadic_levels,
      noise_mean=oc.noise_mean, noise_std=oc.noise_std, ict_s0=oc.ict_s0, ict_s1=oc.ict_s1,
      sigma_min=oc.sigma_min, sigma_max=oc.sigma_max, rho=oc.rho, total_steps=max(total_steps, 1),
      segment_fraction=oc.segment_fraction, segment_steps=tuple(oc.segment_steps))
  return Objective(
      residual=oc.residual, velocity=oc.velocity, stop_gradient=oc.stop_gradient, times=times,
      weighting=oc.weighting, diagonal_fraction=oc.diagonal_fraction, adaptive_p=oc.adaptive_p,
      adaptive_c=oc.adaptive_c, distance=oc.distance, pseudo_huber_c=oc.pseudo_huber_c,
      tangent_normalization=oc.tangent_normalization,
      tangent_warmup_steps=oc.tangent_warmup_steps, dropout=oc.dropout)
