"""The flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x) and its derivatives: the one place they live.

`docs/method.md` §2. A network answers v_{s,t}(x); everything else is derived here:
  - the map X_{s,t}(x) = x + (t - s) v_{s,t}(x), so X_{s,s} = id exactly;
  - the velocity b_t(x) = v_{t,t}(x) (the tangent condition);
  - d/dt X, d/ds X and the spatial directional derivative grad_x X . dx, each by one `jax.jvp`;
    for ESD, d/ds X and grad_x X . b on one shared primal (`jax.linearize`), or their sum by a
    single jvp in (s, x);
  - the same derivatives of v itself, for the `derivatives` placement (gradient through v only).

Everything is batched over a leading axis: times have shape [B] and states [B, ...]. Samples never
interact inside a network, so a jvp with an all-ones time tangent gives every sample's own time
derivative at once.

A *velocity field* here is any function `v(s, t, x) -> v_{s,t}(x)` with those shapes: a network
with its parameters bound (`FlowMapModel.bind`), or a closed form in tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from flow_maps.interpolants import per_sample

Array = jax.Array
VelocityField = Callable[[Array, Array, Array], Array]


class Condition(NamedTuple):
  """What a conditional network is told per row besides (s, t, x) (`docs/method.md` §9): the
  label [B] int (the null label is the class count) and, if guidance is learned, the scale w [B].
  A velocity field is bound to one Condition, so every derivative below is taken with the
  condition held fixed."""

  label: Array
  guidance: Optional[Array] = None


def guided_velocity(v_label: VelocityField, v_null: VelocityField, w: Array, t: Array,
                    x: Array) -> Array:
  """b^w_t(x) = b_t(x|null) + w (b_t(x|c) - b_t(x|null)), from two velocity fields bound to the
  labels c and to the null label (classifier-free guidance, `docs/method.md` §9)."""
  b_null = velocity(v_null, t, x)
  return b_null + per_sample(w, x) * (velocity(v_label, t, x) - b_null)


def flow_map(v: VelocityField, s: Array, t: Array, x: Array) -> Array:
  """X_{s,t}(x) = x + (t - s) v_{s,t}(x)."""
  return x + per_sample(t - s, x) * v(s, t, x)


def velocity(v: VelocityField, t: Array, x: Array) -> Array:
  """b_t(x) = v_{t,t}(x): the network's diagonal is the probability-flow velocity."""
  return v(t, t, x)


def flow_map_and_dt(v: VelocityField, s: Array, t: Array, x: Array) -> tuple[Array, Array]:
  """(X_{s,t}(x), d/dt X_{s,t}(x)) by one jvp in t."""
  return jax.jvp(lambda t_: flow_map(v, s, t_, x), (t,), (jnp.ones_like(t),))


def flow_map_and_ds(v: VelocityField, s: Array, t: Array, x: Array) -> tuple[Array, Array]:
  """(X_{s,t}(x), d/ds X_{s,t}(x)) by one jvp in s."""
  return jax.jvp(lambda s_: flow_map(v, s_, t, x), (s,), (jnp.ones_like(s),))


def flow_map_and_dx(v: VelocityField, s: Array, t: Array, x: Array,
                    dx: Array) -> tuple[Array, Array]:
  """(X_{s,t}(x), grad_x X_{s,t}(x) . dx) by one jvp in x with tangent dx."""
  return jax.jvp(lambda x_: flow_map(v, s, t, x_), (x,), (dx,))


def flow_map_and_partials(v: VelocityField, s: Array, t: Array, x: Array,
                          dx: Array) -> tuple[Array, Array, Array]:
  """(X_{s,t}(x), d/ds X_{s,t}(x), grad_x X_{s,t}(x) . dx) from one linearisation in (s, x):
  the primal pass is computed once for both derivatives (two separate jvps share it only if
  XLA's CSE finds it, which it does for the MLP but not for the UNet)."""
  X, tangent = jax.linearize(lambda s_, x_: flow_map(v, s_, t, x_), s, x)
  return X, tangent(jnp.ones_like(s), jnp.zeros_like(x)), tangent(jnp.zeros_like(s), dx)


def flow_map_and_eulerian_derivative(v: VelocityField, s: Array, t: Array, x: Array,
                                     b: Array) -> tuple[Array, Array]:
  """(X_{s,t}(x), d/ds X_{s,t}(x) + grad_x X_{s,t}(x) . b) by one jvp in (s, x) with tangent
  (1, b): both derivatives of ESD for the price of one tangent pass (`docs/method.md` §3)."""
  return jax.jvp(lambda s_, x_: flow_map(v, s_, t, x_), (s, x), (jnp.ones_like(s), b))


def velocity_and_dt(v: VelocityField, s: Array, t: Array, x: Array) -> tuple[Array, Array]:
  """(v_{s,t}(x), d/dt v_{s,t}(x)) by one jvp in t: for placements that differentiate v only."""
  return jax.jvp(lambda t_: v(s, t_, x), (t,), (jnp.ones_like(t),))


def velocity_and_transport(v: VelocityField, s: Array, t: Array, x: Array,
                           b: Array) -> tuple[Array, Array]:
  """(v_{s,t}(x), d/ds v_{s,t}(x) + grad_x v_{s,t}(x) . b) by one jvp in (s, x) with tangent
  (1, b): the derivative of v along the flow of b (MeanFlow's du/dt, `docs/method.md` §8)."""
  return jax.jvp(lambda s_, x_: v(s_, t, x_), (s, x), (jnp.ones_like(s), b))


def sample(v: VelocityField, x0: Array, grid: Array) -> Array:
  """Applies the map along a time grid: x_{k+1} = X_{t_k, t_{k+1}}(x_k) (`docs/method.md` §2)."""
  batch = x0.shape[0]

  def step(x, times):
    s, t = times
    return flow_map(v, jnp.full((batch,), s, x.dtype), jnp.full((batch,), t, x.dtype), x), None

  x, _ = jax.lax.scan(step, x0, (grid[:-1], grid[1:]))
  return x


@dataclasses.dataclass(frozen=True)
class FlowMapModel:
  """Functional view of a flow-map network (a flax module).

  The module is called as `module(s, t, x, train=...) -> v_{s,t}(x)`, with s, t of shape [B] and
  x of shape [B, ...]. If `module.learn_weight` is true it also has `log_weight(s, t) -> [B]`,
  the learned log-weight w(s, t) of `docs/method.md` §4. Dropout, where the module has it, draws from
  the "dropout" RNG stream.
  """

  module: nn.Module

  @property
  def learns_weight(self) -> bool:
    return bool(getattr(self.module, "learn_weight", False))

  @property
  def num_classes(self) -> int:
    return int(getattr(self.module, "num_classes", 0))

  @property
  def learns_guidance(self) -> bool:
    return bool(getattr(self.module, "learn_guidance", False))

  def init(self, key: Array, x: Array) -> Any:
    """Initial parameters, with the weight head's if the module learns one."""
    batch = x.shape[0]
    s = jnp.zeros((batch,), x.dtype)
    condition = self.null_condition(batch, x.dtype)

    def both(module, s, t, x):
      v = module(s, t, x, train=False, **self._condition_kwargs(condition))
      if self.learns_weight:
        module.log_weight(s, t)
      return v

    params_key, dropout_key = jax.random.split(key)
    return self.module.init({"params": params_key, "dropout": dropout_key}, s, s, x,
                            method=both)["params"]

  def null_condition(self, batch: int, dtype=jnp.float32) -> Optional[Condition]:
    """The null label (and w = 1) for every row; None for an unconditional network."""
    if not self.num_classes:
      return None
    return Condition(jnp.full((batch,), self.num_classes, jnp.int32),
                     jnp.ones((batch,), dtype) if self.learns_guidance else None)

  def _condition_kwargs(self, condition: Optional[Condition]) -> dict:
    if not self.num_classes:
      if condition is not None:
        raise ValueError("an unconditional network was given a condition")
      return {}
    if condition is None:
      raise ValueError(f"this network is conditional ({self.num_classes} classes): bind it "
                       "with a Condition")
    kwargs = {"label": condition.label}
    if self.learns_guidance:
      if condition.guidance is None:
        raise ValueError("this network learns guidance: its Condition needs a scale w")
      kwargs["guidance"] = condition.guidance
    return kwargs

  def bind(self, params: Any, dropout_key: Optional[Array] = None,
           condition: Optional[Condition] = None) -> VelocityField:
    """The velocity field (s, t, x) -> v_{s,t}(x) of these parameters (under `condition`, one
    per row, for a conditional network).

    With a dropout key the network runs in training mode (dropout on, the same mask for a primal
    and its tangents); without one it runs deterministically.
    """
    kwargs = self._condition_kwargs(condition)
    if dropout_key is None:
      return lambda s, t, x: self.module.apply({"params": params}, s, t, x, train=False, **kwargs)
    return lambda s, t, x: self.module.apply({"params": params}, s, t, x, train=True,
                                             rngs={"dropout": dropout_key}, **kwargs)

  def log_weight(self, params: Any, s: Array, t: Array) -> Array:
    return self.module.apply({"params": params}, s, t, method=type(self.module).log_weight)
