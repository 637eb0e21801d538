"""Evaluation of a flow map on the d-dimensional Gaussian mixture (`data/mixture_nd.py`;
`docs/method.md` §2, §7; `docs/mixture_nd.md`).

A histogram KL does not exist in d dimensions, so a run is measured by
  - flow_map_error[N] = mean |X^N(x0) - X_ref(x0)|^2: the N-step map against the exact reference
    map X_ref_{0,1} (an adaptive solve of the exact velocity, `references.py`) from the same
    noise, the definition of `toy2d_eval.flow_map_error`;
  - w2[N]: a 2-Wasserstein estimate between the N-step samples and as many exact data samples,
    by exact optimal assignment (`w2`). Between two finite samples W2 is biased upwards (it does
    not vanish even between two draws of the same law, and the bias grows with d, roughly as
    n^(-1/d)), so the same estimator between two independent exact sample sets is reported as
    `w2_floor`: differences below it are not resolved;
  - the same two numbers for the ODE on the model's own velocity v_{t,t} (`ode_steps`; the
    configs use Euler, as many network calls as the N-step map: the baseline, and flow
    matching's sampler);
  - the Lipschitz constant of b_t (`lipschitz_estimate`): the largest Jacobian spectral norm over
    samples of I_t at a grid of times, by power iteration with jvp / vjp, for the exact velocity
    and for the model's v_{t,t}, next to the dataset's closed form sup over all x
    (`MixtureND.lipschitz`), which the estimate over samples can only approach from below.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from flow_maps import flow_map as fm
from flow_maps import sampling
from flow_maps.data.mixture_nd import MixtureND
from flow_maps.evaluation import references
from flow_maps.evaluation.toy2d_eval import (_batched, flow_map_error, map_samples, ode_samples,
                                             reference_samples)
from flow_maps.interpolants import Interpolant

Array = jax.Array
Velocity = Callable[[Array, Array], Array]  # b(t [B], x [B, d]) -> [B, d]


def jacobian_norms(velocity: Velocity, t: Array, x: Array, key: Array,
                   iterations: int = 20) -> Array:
  """|grad_x b_t(x)| (spectral norm) per row [B] by power iteration on J^T J.

  Rows never interact in a velocity field, so the batch's Jacobian is block diagonal and one jvp
  (J u) and one vjp (J^T w) of the whole batch act on every row's own block at once. Returns
  |J u| for the final unit u: a lower bound that converges to the largest singular value at the
  rate of the gap to the second one.
  """
  f = lambda y: velocity(t, y)
  _, jvp = jax.linearize(f, x)
  vjp = jax.linear_transpose(jvp, x)
  unit = lambda u: u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-30)

  def body(_, u):
    return unit(vjp(jvp(u))[0])

  u = jax.lax.fori_loop(0, iterations, body, unit(jax.random.normal(key, x.shape, x.dtype)))
  return jnp.linalg.norm(jvp(u), axis=-1)


def time_grid(num_times: int) -> np.ndarray:
  """t = 1 - geomspace(1, 1e-3): from 0, dense towards 1, where a narrow mixture's velocity is
  steepest (at 1 - t ~ component_std / sigma0, `mixture_nd.py`)."""
  return 1.0 - np.geomspace(1.0, 1e-3, num_times)


def lipschitz_estimate(velocity: Velocity, dataset, interpolant: Interpolant, *, key: Array,
                       num_times: int = 24, samples_per_time: int = 128, iterations: int = 20,
                       batch_size: int = 4096) -> dict:
  """max over t in `time_grid` and x ~ p_t (x = I_t of fresh noise and data) of
  |grad b_t(x)|, by `jacobian_norms`. Returns {"max", "t_at_max", "per_time": [...]}."""
  times = time_grid(num_times)
  noise_key, data_key, power_key = jax.random.split(key, 3)
  n = num_times * samples_per_time
  t = np.repeat(times, samples_per_time).astype(np.float32)
  x0 = sampling.noise(noise_key, n, (dataset.dim,), interpolant.sigma0)
  x = np.asarray(interpolant.interpolate(jnp.asarray(t), x0, dataset.sample(data_key, n)))
  fn = jax.jit(lambda x, k, t: jacobian_norms(velocity, t, x, k, iterations))
  norms = _batched(fn, x, batch_size, power_key, rows=(t,)).reshape(num_times, samples_per_time)
  per_time = norms.max(axis=1)
  return {"max": float(per_time.max()), "t_at_max": float(times[per_time.argmax()]),
          "per_time": [float(v) for v in per_time]}


def w2(x: np.ndarray, y: np.ndarray) -> float:
  """The 2-Wasserstein distance between the empirical laws of x and y ([n, d] each, same n):
  sqrt of the mean squared distance under the optimal one-to-one assignment (exact, Hungarian;
  O(n^3), about a second for n = 2,000)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  cost = np.sum(x**2, 1)[:, None] + np.sum(y**2, 1)[None, :] - 2 * x @ y.T
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  return float(np.sqrt(max(np.mean(cost[rows, cols]), 0.0)))


def evaluate(v: fm.VelocityField, dataset: MixtureND, interpolant: Interpolant, *, key: Array,
             steps=(1, 2, 4, 8, 16), ode_steps=(16,), num_samples: int = 2_000,
             batch_size: int = 2_000, ode_sampler: str = "heun", sampler: str = "flow_map",
             lipschitz_times: int = 24, lipschitz_samples: int = 128,
             lipschitz_iterations: int = 20, lipschitz_model: bool = True) -> dict:
  """Flow-map error and W2 per step count (map and ODE), the W2 floor, the Lipschitz constants.

  Returns a JSON-ready dict: {"flow_map_error": {"N": ...}, "w2": {"N": ...},
  "ode_flow_map_error": {...}, "ode_w2": {...}, "w2_floor", "lipschitz": {"sup": closed form over
  all x and t, "sup_on_grid": the same over the estimate's times, "exact": the estimate on the
  exact velocity, "exact_t", "model", "model_t"}, "num_samples", ...}. Every number uses the same
  n = num_samples noise draws; the W2 data samples and the floor's second set come from
  independent keys.
  """
  noise_key, data_key, floor_key, lip_key = jax.random.split(key, 4)
  renoise_key = jax.random.fold_in(noise_key, 1)
  x0 = np.asarray(sampling.noise(noise_key, num_samples, (dataset.dim,), interpolant.sigma0))
  x_ref = reference_samples(dataset, interpolant, x0, batch_size)
  data = np.asarray(dataset.sample(data_key, num_samples))

  result = {"flow_map_error": {}, "w2": {}, "ode_flow_map_error": {}, "ode_w2": {}}
  for n_steps in steps:
    x = map_samples(v, x0, n_steps, batch_size, sampler, interpolant, renoise_key)
    result["flow_map_error"][str(n_steps)] = flow_map_error(x, x_ref)
    result["w2"][str(n_steps)] = w2(x, data)
  for n_steps in ode_steps:
    x = ode_samples(v, x0, n_steps, batch_size, ode_sampler)
    result["ode_flow_map_error"][str(n_steps)] = flow_map_error(x, x_ref)
    result["ode_w2"][str(n_steps)] = w2(x, data)
  result["w2_floor"] = w2(np.asarray(dataset.sample(floor_key, num_samples)), data)
  result["w2_reference"] = w2(x_ref, data)  # the exact map's own samples: the floor again

  estimate = functools.partial(lipschitz_estimate, dataset=dataset, interpolant=interpolant,
                               key=lip_key, num_times=lipschitz_times,
                               samples_per_time=lipschitz_samples,
                               iterations=lipschitz_iterations, batch_size=batch_size)
  exact = estimate(references.exact_velocity(dataset, interpolant))
  lip = {"sup": dataset.lipschitz(interpolant),
         "sup_on_grid": float(np.max(dataset.lipschitz_in_time(
             interpolant, time_grid(lipschitz_times)))),
         "exact": exact["max"], "exact_t": exact["t_at_max"]}
  if lipschitz_model:
    model = estimate(lambda t, x: fm.velocity(v, t, x))
    lip.update(model=model["max"], model_t=model["t_at_max"])
  result["lipschitz"] = lip
  result.update(num_samples=num_samples, ode_sampler=ode_sampler, sampler=sampler,
                dataset=dataset.name, dim=dataset.dim, num_components=dataset.num_components,
                separation=dataset.separation, component_std=dataset.component_std)
  return result


def evaluate_config(v: fm.VelocityField, dataset: MixtureND, interpolant: Interpolant, config,
                    *, key: Array) -> dict:
  """`evaluate` with the settings of config.eval (`config_defaults.mixture_nd`)."""
  e = config.eval
  return evaluate(v, dataset, interpolant, key=key, steps=tuple(e.sampling_steps),
                  ode_steps=tuple(e.ode_steps), ode_sampler=e.ode_sampler,
                  num_samples=e.num_samples,
                  batch_size=e.batch_size, sampler=e.sampler, lipschitz_times=e.lipschitz_times,
                  lipschitz_samples=e.lipschitz_samples,
                  lipschitz_iterations=e.lipschitz_iterations,
                  lipschitz_model=e.lipschitz_model)


def format_table(result: dict) -> str:
  """Flow-map error and W2 per sampler and step count, the floor, the Lipschitz constants."""
  lip = result["lipschitz"]
  lines = [f"{result['dataset']}: d = {result['dim']}, K = {result['num_components']}, "
           f"separation {result['separation']:g}, component std {result['component_std']:g}; "
           f"{result['num_samples']} samples",
           f"Lipschitz of b_t: sup {lip['sup']:.4g} (on the estimate's times "
           f"{lip['sup_on_grid']:.4g}), estimated on samples: exact velocity "
           f"{lip['exact']:.4g} (t = {lip['exact_t']:.3f})"
           + (f", model v_(t,t) {lip['model']:.4g} (t = {lip['model_t']:.3f})"
              if "model" in lip else ""),
           f"W2 floor (two exact sample sets) {result['w2_floor']:.4f}, exact map's samples "
           f"{result['w2_reference']:.4f}",
           f"{'sampler':>10} {'map error':>11} {'W2':>8}"]
  for prefix, name in (("", "map"), ("ode_", result["ode_sampler"])):
    for n, error in result[prefix + "flow_map_error"].items():
      lines.append(f"{name + ' ' + n:>10} {error:11.3e} {result[prefix + 'w2'][n]:8.4f}")
  return "\n".join(lines)
