"""Samplers: the N-step flow map and the ODE on the model's own velocity (`docs/method.md` §2).

  - Flow map: x_{k+1} = X_{t_k, t_{k+1}}(x_k) on a grid from t = 0 (noise) to t = 1 (data);
    the map itself is `flow_map.sample`.
  - ODE: dx/dt = b_t(x) with b_t = v_{t,t} (`flow_map.velocity`), Euler (order 1) or Heun
    (order 2) with N uniform steps: the many-step baseline the map is measured against.

All functions take a velocity field v(s, t, x) (`flow_map.py`) and a batch x0 [B, ...]; step
counts are Python ints, so they are jittable with the counts static, e.g.
`jax.jit(lambda x0: sample_flow_map(v, x0, 4))`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flow_maps import flow_map as fm
from flow_maps import interpolants

Array = jax.Array


def uniform_grid(steps: int, dtype=jnp.float32) -> Array:
  """t_k = k / N, k = 0..N."""
  return jnp.linspace(0.0, 1.0, steps + 1, dtype=dtype)


def noise(key: Array, num_samples: int, shape: tuple[int, ...], sigma0: float) -> Array:
  """x0 ~ N(0, sigma0^2 I), [num_samples, *shape] (`docs/method.md` §1)."""
  return interpolants.noise(key, (num_samples, *shape), sigma0)


def row_keys(key: Array, index: Array) -> Array:
  """One key per sample from its global index [B] (raw keys [B, 2]): a sample's random numbers
  are then the same whatever batch, device or process draws it."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def row_noise(keys: Array, shape: tuple[int, ...], sigma0: float) -> Array:
  """x0 ~ N(0, sigma0^2 I), [B, *shape], row b drawn from keys[b] alone."""
  return jax.vmap(lambda k: interpolants.noise(k, shape, sigma0))(keys)


def sample_flow_map_on_grid(v: fm.VelocityField, x0: Array, grid: Array) -> Array:
  """x_{k+1} = X_{t_k, t_{k+1}}(x_k) along any increasing grid from t_0 to t_N."""
  return fm.sample(v, x0, jnp.asarray(grid, x0.dtype))


def sample_flow_map(v: fm.VelocityField, x0: Array, steps: int) -> Array:
  """The N-step flow-map sampler on the uniform grid t_k = k / N."""
  return fm.sample(v, x0, uniform_grid(steps, x0.dtype))


def _ode_sample(v: fm.VelocityField, x0: Array, steps: int, heun: bool) -> Array:
  batch, h = x0.shape[0], 1.0 / steps

  def b(t, x):
    return fm.velocity(v, jnp.full((batch,), t, x.dtype), x)

  def step(x, k):
    t = k * h
    b0 = b(t, x)
    if not heun:
      return x + h * b0, None
    b1 = b(t + h, x + h * b0)
    return x + (h / 2) * (b0 + b1), None

  x, _ = jax.lax.scan(step, x0, jnp.arange(steps, dtype=x0.dtype))
  return x


def sample_euler(v: fm.VelocityField, x0: Array, steps: int) -> Array:
  """Euler on dx/dt = v_{t,t}(x) with N uniform steps from t = 0 to t = 1."""
  return _ode_sample(v, x0, steps, heun=False)


def sample_heun(v: fm.VelocityField, x0: Array, steps: int) -> Array:
  """Heun (explicit trapezoid) on dx/dt = v_{t,t}(x) with N uniform steps from 0 to 1."""
  return _ode_sample(v, x0, steps, heun=True)


ODE_SAMPLERS = {"euler": sample_euler, "heun": sample_heun}


def sample_consistency(v: fm.VelocityField, x0: Array, steps: int, interpolant,
                       key: Array) -> Array:
  """Consistency models' multistep sampler for a single-time map X_{s,1}: on the grid
  t_k = k / N, x1 = X_{t_k,1}(x), then fresh noise back to t_{k+1}: x = I_{t_{k+1}}(z, x1) with
  z ~ N(0, sigma0^2 I). One step is X_{0,1}(x0). `key`: one raw key [2], or one per row [B, 2]
  (`row_keys`), each row's re-noising then its own key's alone."""
  batch, dtype = x0.shape[0], x0.dtype
  grid = uniform_grid(steps, dtype)
  one = jnp.ones((batch,), dtype)

  def step(x, inputs):
    t, k = inputs
    x1 = fm.flow_map(v, jnp.full((batch,), t, dtype), one, x)
    if key.ndim == 2:
      z = row_noise(jax.vmap(lambda r: jax.random.fold_in(r, k))(key), x.shape[1:],
                    interpolant.sigma0).astype(dtype)
    else:
      z = interpolant.noise(jax.random.fold_in(key, k), x.shape, dtype)
    t_next = jnp.full((batch,), grid[k + 1], dtype)
    return jnp.where(k + 1 < steps, interpolant.interpolate(t_next, z, x1), x1), None

  x, _ = jax.lax.scan(step, x0, (grid[:-1], jnp.arange(steps)))
  return x


SAMPLERS = ("flow_map", "consistency")


def map_sampler(name: str, interpolant=None):
  """The few-step sampler of `eval.sampler` as fn(v, x0, steps, key) (key: the re-noising of
  'consistency'; 'flow_map' is deterministic and ignores it)."""
  if name == "flow_map":
    return lambda v, x0, steps, key=None: sample_flow_map(v, x0, steps)
  if name == "consistency":
    return lambda v, x0, steps, key: sample_consistency(v, x0, steps, interpolant, key)
  raise ValueError(f"eval.sampler: unknown value {name!r}; allowed: {SAMPLERS}")


# --------------------------------------------------------------------------- conditional models


def sample_labels(num_classes: int, label: int, key: Array, n: int) -> np.ndarray:
  """The labels to generate: `label` for every sample, or (-1) every class, uniformly from key."""
  if label >= 0:
    return np.full((n,), label, np.int32)
  return np.asarray(jax.random.randint(key, (n,), 0, num_classes), np.int32)


def map_samples_at(learned: bool, w: float, map_scale: float = 1.0) -> bool:
  """Whether a conditional map samples guidance scale w: any w if it takes w (learned
  guidance), else only the scale it learned (1, or MeanFlow's omega / (1 - kappa))."""
  return learned or w == map_scale


def guided_fields(bind: Callable, num_classes: int, learned: bool, map_scale: float = 1.0):
  """(map field, ODE field) of a conditional network, each (labels [B], w [B]) -> a velocity
  field (`docs/method.md` §9); `bind(condition)` binds the network to a `flow_map.Condition`.

  The map: the network at (c, w) when guidance is learned (one call per step); without a w
  input its field ignores w and is only used where `map_samples_at`. The ODE: classifier-free
  guidance on the diagonal, b(.|null) + (w / W) (b(.|c) - b(.|null)) from the fields of c and of
  the null label at w = 1, W = 1 with learned guidance, else `map_scale` (the scale the
  diagonal at c learned); two calls per step."""
  def condition(label, w):
    return fm.Condition(label, w if learned else None)

  def map_field(label, w):
    return bind(condition(label, w))

  def ode_field(label, w):
    ones = jnp.ones(label.shape, jnp.float32)
    v_label = bind(condition(label, ones))
    v_null = bind(condition(jnp.full_like(label, num_classes), ones))
    ratio = w if learned else w / map_scale
    return lambda s, t, x: fm.guided_velocity(v_label, v_null, ratio.astype(x.dtype), t, x)

  return map_field, ode_field
