"""Evaluation of a flow map on a 2-D toy dataset: KL per step count, error against the reference
map, the ODE baseline, a table and a figure (`docs/method.md` §2, §6).

`evaluate` draws n noise samples x0 ~ N(0, sigma0^2 I) once and pushes the same noise through
  - the N-step map for every N in `steps` (`sampling.sample_flow_map`): KL by `kl.histogram_kl`;
  - the ODE on the model's own velocity v_{t,t} with every count in `ode_steps` (Heun by
    default): KL as well;
  - on the first `flow_map_error_samples` of them, the reference map X_{0,1} (an adaptive solve
    of the exact velocity, `references.py`): flow_map_error[N] = mean |X^N(x0) - X_ref(x0)|^2,
    the squared distance summed over the two coordinates.
It also reports the KL noise floor: the same estimator on n exact data samples.

Cost on the shared 2-core CPU: the reference solve of 10k checkerboard points takes about 12 s
(plus about 10 s of compilation, once per process and dataset), 0.7 s for the Gaussian ring; the
model's cost is its evaluations, N per sample for the map and 2 N for Heun.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from flow_maps import flow_map as fm
from flow_maps import sampling
from flow_maps.data.toy2d import Domain, Toy2D
from flow_maps.evaluation import kl as kl_lib
from flow_maps.evaluation import references
from flow_maps.interpolants import Interpolant

Array = jax.Array
PLOT_DOMAIN = ((-1.5, 1.5), (-1.5, 1.5))


def _batched(fn, x: Array, batch_size: int, key: Optional[Array] = None,
             rows: tuple = ()) -> np.ndarray:
  """fn over x in batches of batch_size, the last one padded so that fn compiles once; with a
  key, fn(chunk, key folded with the chunk's first row index); `rows` are further per-row
  arrays, chunked alongside x and passed after it."""
  out = []
  for start in range(0, x.shape[0], batch_size):
    chunks = [np.asarray(a[start:start + batch_size]) for a in (x, *rows)]
    size = chunks[0].shape[0]
    if size < batch_size and x.shape[0] > batch_size:
      chunks = [np.concatenate([c, np.zeros((batch_size - size,) + c.shape[1:], c.dtype)])
                for c in chunks]
    args = chunks if key is None else [chunks[0], jax.random.fold_in(key, start), *chunks[1:]]
    out.append(np.asarray(fn(*args))[:size])
  return np.concatenate(out)


def flow_map_error(x: np.ndarray, x_ref: np.ndarray) -> float:
  """mean |x - x_ref|^2 over the rows, the squared distance summed over the coordinates: the
  error of samples against the reference map's from the same noise (any dimension)."""
  return float(np.mean(np.sum((np.asarray(x) - np.asarray(x_ref))**2, axis=-1)))


def map_samples(v, x0: Array, steps: int, batch_size: int, sampler: str = "flow_map",
                interpolant: Optional[Interpolant] = None, key: Optional[Array] = None,
                labels: Optional[np.ndarray] = None) -> np.ndarray:
  """The N-step samples of the noise x0 [n, 2]: the flow map, or ('consistency') the
  single-time map with re-noising drawn from `key` (`sampling.sample_consistency`). With
  `labels` [n], `v` is a conditional map, labels [b] -> velocity field (`_guided`), each row
  bound to its own label."""
  fn = sampling.map_sampler(sampler, interpolant)
  rows = () if labels is None else (labels,)
  field = lambda *c: v(*c) if c else v
  if sampler == "flow_map":
    return _batched(jax.jit(lambda x, *c: fn(field(*c), x, steps)), x0, batch_size, rows=rows)
  return _batched(jax.jit(lambda x, k, *c: fn(field(*c), x, steps, k)), x0, batch_size, key,
                  rows=rows)


def ode_samples(v: fm.VelocityField, x0: Array, steps: int, batch_size: int,
                sampler: str = "heun") -> np.ndarray:
  """ODE samples on b_t = v_{t,t} with N steps ("euler" or "heun") from the noise x0 [n, 2]."""
  fn = functools.partial(sampling.ODE_SAMPLERS[sampler], v, steps=steps)
  return _batched(jax.jit(fn), x0, batch_size)


def reference_samples(dataset: Toy2D, interpolant: Interpolant, x0: Array,
                      batch_size: int, label: Optional[np.ndarray] = None,
                      w: Optional[float] = None) -> np.ndarray:
  """X_ref_{0,1}(x0): the exact velocity solved from noise (t = 0) to data (t = 1); with a label
  per row and a guidance scale w, the exact guided velocity's (`references.guided_velocity`).

  The solve is the slowest part of a 2-D evaluation (about a minute for 10,000 points on 2 CPU
  cores) and depends only on the dataset, the interpolant and x0 (and the labels and w), so its
  result is cached on disk under `$FLOW_MAPS_CACHE` (default ~/.cache/flow_maps), keyed by a
  digest of all of them and the solver's settings: the members of a sweep with the same seed
  share one solve.
  """
  guided = label is not None
  flow = (references.guided_reference_flow if guided else references.reference_flow)(
      dataset, interpolant)
  x0 = np.asarray(x0)
  extra = (np.asarray(label, np.int32), np.full(x0.shape[0], w, x0.dtype)) if guided else ()
  described = (dataclasses.asdict(dataset), interpolant.name, interpolant.sigma0, flow.rtol,
               flow.atol, x0.dtype.str, x0.shape) + (("guided", float(w)) if guided else ())
  key = hashlib.sha256(repr(described).encode() + x0.tobytes()
                       + (extra[0].tobytes() if guided else b"")).hexdigest()[:32]
  path = os.path.join(os.environ.get("FLOW_MAPS_CACHE",
                                     os.path.expanduser("~/.cache/flow_maps")),
                      "reference_maps", f"{key}.npy")
  if os.path.exists(path):
    try:
      return np.load(path)
    except (OSError, ValueError):
      pass  # a damaged cache entry is solved again and rewritten below

  def solve(x, *args):
    zeros = np.zeros(x.shape[0], x.dtype)
    return flow.flow_map(zeros, zeros + 1, x, *args)

  out = _batched(solve, x0, batch_size, rows=extra)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
      np.save(f, out)
    os.replace(tmp, path)
  except OSError:
    pass  # a read-only or full cache directory costs only the next solve
  return out


def evaluate(v: fm.VelocityField, dataset: Toy2D, interpolant: Interpolant, *, key: Array,
             steps=(1, 2, 4, 8, 16), ode_steps=(16, 64, 256), num_samples: int = 100_000,
             batch_size: int = 10_000, bins: int = kl_lib.DEFAULT_BINS,
             flow_map_error_samples: int = 10_000, ode_sampler: str = "heun",
             sampler: str = "flow_map") -> dict:
  """KL per step count, the noise floor, the error against the reference map, the ODE's KL.

  Returns a JSON-ready dict: {"kl": {"N": ...}, "kl_noise_floor": ..., "flow_map_error": {"N": ...},
  "flow_map_error_samples": m, "ode_kl": {"N": ...}, "ode_sampler": ..., "num_samples": n,
  "bins": B, "dataset": name}. KL by `kl.histogram_kl` (B x B bins over the dataset's domain);
  the floor uses n exact samples drawn from the second half of `key`.
  """
  noise_key, floor_key = jax.random.split(key)
  renoise_key = jax.random.fold_in(noise_key, 1)
  x0 = np.asarray(sampling.noise(noise_key, num_samples, (2,), interpolant.sigma0))
  m = min(flow_map_error_samples, num_samples)
  x_ref = reference_samples(dataset, interpolant, x0[:m], batch_size)
  kl = functools.partial(kl_lib.histogram_kl, dataset=dataset, bins=bins)

  result = {"kl": {}, "flow_map_error": {}, "ode_kl": {}}
  for n_steps in steps:
    x = map_samples(v, x0, n_steps, batch_size, sampler, interpolant, renoise_key)
    result["kl"][str(n_steps)] = kl(x)
    result["flow_map_error"][str(n_steps)] = flow_map_error(x[:m], x_ref)
  for n_steps in ode_steps:
    result["ode_kl"][str(n_steps)] = kl(ode_samples(v, x0, n_steps, batch_size, ode_sampler))
  result["kl_noise_floor"] = kl_lib.kl_noise_floor(dataset, num_samples, floor_key, bins)
  result.update(flow_map_error_samples=m, ode_sampler=ode_sampler, sampler=sampler, num_samples=num_samples,
                bins=bins, dataset=dataset.name)
  return result


def _guided(bind, num_classes: int, learned: bool, w: float, map_scale: float):
  """(map field or None where the map cannot sample w, ODE field), each labels -> a velocity
  field at the scalar scale w (`sampling.guided_fields`)."""
  map_field, ode_field = sampling.guided_fields(bind, num_classes, learned, map_scale)
  at = lambda field: (lambda label: field(label, jnp.full(label.shape, w, jnp.float32)))
  return (at(map_field) if sampling.map_samples_at(learned, w, map_scale) else None,
          at(ode_field))


def evaluate_guided(bind, dataset: Toy2D, interpolant: Interpolant, *, key: Array,
                    learned: bool, scales=(1.0,), label: int = -1, map_scale: float = 1.0,
                    steps=(1, 2, 4, 8, 16),
                    ode_steps=(16,), num_samples: int = 100_000, batch_size: int = 10_000,
                    bins: int = kl_lib.DEFAULT_BINS, flow_map_error_samples: int = 10_000,
                    ode_sampler: str = "heun", sampler: str = "flow_map") -> dict:
  """A conditional model per guidance scale w (`docs/method.md` §9), from one draw of noise
  and labels: for the N-step map at w and the guided ODE, the error against the exact guided
  map X^w_{0,1} (`references.guided_velocity`, solved per label), the fraction of samples whose
  class region (their component's mode, their cell) is their label's, and the KL against the
  data (which guidance is expected to move away from for w != 1).

  The map rows use `sampler` (`map_samples`): the flow map, or the consistency sampler, whose
  re-noising key is derived from `key` as in `evaluate` and shared by every w, so its samples at
  N = 1 are the flow map's and a re-run gives the same numbers. At N >= 2 its samples are not a
  function of x0 alone, so its "flow_map_error" is the distance to X^w_{0,1}(x0) of a sample
  that also carries fresh noise (`docs/guidance.md`).

  Returns {"guidance": {"w": {"flow_map_error", "class_fraction", "kl", "ode_flow_map_error",
  "ode_class_fraction", "ode_kl"}}, "label", "sampler", ...}; the top level also has the w = 1
  map's "kl" and "flow_map_error" when 1 is among the scales, as unconditional results do.
  """
  noise_key, floor_key = jax.random.split(key)
  renoise_key = jax.random.fold_in(noise_key, 1)  # as `evaluate`'s
  x0 = np.asarray(sampling.noise(noise_key, num_samples, (2,), interpolant.sigma0))
  labels = sampling.sample_labels(dataset.num_classes, label, jax.random.fold_in(noise_key, 2),
                                  num_samples)
  m = min(flow_map_error_samples, num_samples)
  kl = functools.partial(kl_lib.histogram_kl, dataset=dataset, bins=bins)
  label_of = jax.jit(dataset.label_of)

  def measures(x, x_ref):
    return (flow_map_error(x[:m], x_ref),
            float(np.mean(np.asarray(label_of(x)) == labels)), kl(x))

  result = {"guidance": {}}
  for w in scales:
    x_ref = reference_samples(dataset, interpolant, x0[:m], batch_size, labels[:m], w)
    map_field, ode_field = _guided(bind, dataset.num_classes, learned, w, map_scale)
    row = {"flow_map_error": {}, "class_fraction": {}, "kl": {}, "ode_flow_map_error": {},
           "ode_class_fraction": {}, "ode_kl": {}}
    for n_steps in steps if map_field is not None else ():
      x = map_samples(map_field, x0, n_steps, batch_size, sampler, interpolant, renoise_key,
                      labels)
      (row["flow_map_error"][str(n_steps)], row["class_fraction"][str(n_steps)],
       row["kl"][str(n_steps)]) = measures(x, x_ref)
    for n_steps in ode_steps:
      x = _batched(jax.jit(lambda x, c, n=n_steps: sampling.ODE_SAMPLERS[ode_sampler](
          ode_field(c), x, n)), x0, batch_size, rows=(labels,))
      (row["ode_flow_map_error"][str(n_steps)], row["ode_class_fraction"][str(n_steps)],
       row["ode_kl"][str(n_steps)]) = measures(x, x_ref)
    result["guidance"][f"{w:g}"] = row
  if "1" in result["guidance"] and result["guidance"]["1"]["kl"]:
    result["kl"] = result["guidance"]["1"]["kl"]
    result["flow_map_error"] = result["guidance"]["1"]["flow_map_error"]
  result["kl_noise_floor"] = kl_lib.kl_noise_floor(dataset, num_samples, floor_key, bins)
  result.update(label=label, learned_guidance=learned, flow_map_error_samples=m,
                sampler=sampler, ode_sampler=ode_sampler, num_samples=num_samples, bins=bins,
                dataset=dataset.name)
  return result


def format_guided_table(result: dict) -> str:
  """One row per (w, sampler): flow-map error against the exact guided map, class fraction, KL;
  the map's rows are named by their sampler ("map": the flow map, "consistency")."""
  label = "every class" if result["label"] < 0 else f"class {result['label']}"
  sampler = result.get("sampler", "flow_map")
  lines = [f"{result['dataset']} guided ({label}): {result['num_samples']} samples, map error "
           f"on {result['flow_map_error_samples']}; KL floor {result['kl_noise_floor']:.4f}; "
           f"map sampler {sampler}",
           f"{'w':>5} {'sampler':>14} {'map error':>11} {'class frac':>10} {'KL':>8}"]
  for w, row in result["guidance"].items():
    for prefix, name in (("", "map" if sampler == "flow_map" else sampler),
                         ("ode_", result["ode_sampler"])):
      for n, error in row[prefix + "flow_map_error"].items():
        lines.append(f"{w:>5} {name + ' ' + n:>14} {error:11.3e} "
                     f"{row[prefix + 'class_fraction'][n]:10.3f} {row[prefix + 'kl'][n]:8.4f}")
  return "\n".join(lines)


def guided_figure_samples(bind, dataset: Toy2D, interpolant: Interpolant, *, key: Array,
                          learned: bool, scales=(1.0,), label: int = -1,
                          map_scale: float = 1.0, steps=(1, 4),
                          num_samples: int = 20_000, batch_size: int = 10_000,
                          sampler: str = "flow_map") -> dict:
  """{w: {N: map samples, "exact": the exact guided map's samples}} from one draw of noise and
  labels, for `plot_guided`; the map's by `sampler`, re-noised (consistency) from
  fold_in(key, 1) as in `figure_samples`."""
  x0 = np.asarray(sampling.noise(key, num_samples, (2,), interpolant.sigma0))
  labels = sampling.sample_labels(dataset.num_classes, label, jax.random.fold_in(key, 2),
                                  num_samples)
  renoise_key = jax.random.fold_in(key, 1)
  out = {}
  for w in scales:
    map_field, _ = _guided(bind, dataset.num_classes, learned, w, map_scale)
    panels = {}
    for n in steps if map_field is not None else ():
      panels[str(n)] = map_samples(map_field, x0, n, batch_size, sampler, interpolant,
                                   renoise_key, labels)
    panels["exact"] = reference_samples(dataset, interpolant, x0, batch_size, labels, w)
    out[f"{w:g}"] = panels
  return out


def plot_guided(samples: dict, path: str, *, domain: Optional[Domain] = None, title: str = "",
                bins: int = 100, margin: float = 0.1) -> None:
  """A PNG with one row per guidance scale w: the N-step maps' samples, then the exact guided
  map's, as 2-D histograms on fixed axes."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  box = [(lo - margin * (hi - lo), hi + margin * (hi - lo)) for lo, hi in (domain or PLOT_DOMAIN)]
  columns = max(len(panels) for panels in samples.values())
  fig = Figure(figsize=(2.6 * columns, 2.8 * len(samples)))
  FigureCanvasAgg(fig)
  if title:
    fig.suptitle(title)
  for r, (w, panels) in enumerate(samples.items()):
    for c, (name, x) in enumerate(panels.items()):
      ax = fig.add_subplot(len(samples), columns, r * columns + c + 1)
      x = np.asarray(x)
      counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=box)
      ax.imshow(counts.T, origin="lower", extent=(*box[0], *box[1]), cmap="magma",
                interpolation="nearest", aspect="equal")
      ax.set_title(f"w = {w}, " + ("exact" if name == "exact" else f"N = {name}"))
      ax.set_xticks([])
      ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write_guided_samples(bind, exp, config, out: str, *, key: Array) -> None:
  """A conditional 2-D run's samples: labels_<c|all>.npy (int32 [count]: sample.label, or
  uniform if -1) and n<N>_label_<c|all>_w<w>.npy (float32 [count, 2]) for every w of
  sample.guidance and N of sample.sampling_steps, from one draw of noise; by eval.sampler, re-noised
  (consistency) from fold_in(key, 1) as an unconditional run's samples are."""
  count, cond = config.sample.num_samples, exp.conditioning
  noise = exp.interpolant.sigma0 * jax.random.normal(key, (count,) + exp.data_shape)
  labels = sampling.sample_labels(cond.num_classes, config.sample.label,
                                  jax.random.fold_in(key, 2), count)
  sampler = sampling.map_sampler(config.eval.sampler, exp.interpolant)
  which = "all" if config.sample.label < 0 else str(config.sample.label)
  np.save(os.path.join(out, f"labels_{which}.npy"), labels)
  for w in config.sample.guidance:
    map_field, _ = _guided(bind, cond.num_classes, cond.learned_guidance, w, cond.map_scale)
    if map_field is None:
      raise ValueError(f"sample.guidance: the map learned w = {cond.map_scale:g} only "
                       f"(guidance.learned is False), got {w:g}")
    for n in config.sample.sampling_steps:
      x = sampler(map_field(jnp.asarray(labels)), noise, n, jax.random.fold_in(key, 1))
      np.save(os.path.join(out, f"n{n}_label_{which}_w{w:g}.npy"), np.asarray(x, np.float32))


def format_table(result: dict) -> str:
  """A plain-text table: one row per N (KL, noise floor, flow-map error), then the ODE rows."""
  floor = result["kl_noise_floor"]
  lines = [f"{result.get('dataset', '')} KL(data || model): {result['num_samples']} samples, "
           f"{result.get('bins', '?')}^2 bins; flow-map error on "
           f"{result['flow_map_error_samples']} samples",
           f"{'steps':>8} {'KL':>9} {'floor':>9} {'map error':>11}"]
  for n_steps, value in result["kl"].items():
    error = result["flow_map_error"].get(n_steps, float("nan"))
    lines.append(f"{'map ' + n_steps:>8} {value:9.4f} {floor:9.4f} {error:11.3e}")
  for n_steps, value in result["ode_kl"].items():
    label = f"{result.get('ode_sampler', 'ode')} {n_steps}"
    lines.append(f"{label:>8} {value:9.4f} {floor:9.4f} {'':>11}")
  return "\n".join(lines)


def figure_samples(v: fm.VelocityField, dataset: Toy2D, interpolant: Interpolant, *, key: Array,
                   steps=(1, 2, 4, 8, 16), num_samples: int = 20_000,
                   batch_size: int = 10_000, sampler: str = "flow_map") -> dict:
  """{N: N-step samples [num_samples, 2]} from one draw of noise, for `plot_samples`."""
  del dataset  # the samples only need the noise scale; kept for a uniform call signature
  x0 = np.asarray(sampling.noise(key, num_samples, (2,), interpolant.sigma0))
  renoise_key = jax.random.fold_in(key, 1)
  return {n: map_samples(v, x0, n, batch_size, sampler, interpolant, renoise_key) for n in steps}


def plot_samples(samples_by_N: dict, data: Array, path: str, *, domain: Optional[Domain] = None,
                 title: str = "", bins: int = 100, margin: float = 0.1) -> None:
  """A PNG with one 2-D histogram panel per step count, then the data, on fixed axes.

  The axes show `domain` (default [-1.5, 1.5]^2) widened by `margin` of its width on each side,
  so that samples just off the support stay visible; every panel has the same limits.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  box = [(lo - margin * (hi - lo), hi + margin * (hi - lo)) for lo, hi in (domain or PLOT_DOMAIN)]
  panels = [(f"N = {n}", samples_by_N[n]) for n in sorted(samples_by_N, key=int)]
  panels.append(("data", data))
  fig = Figure(figsize=(2.6 * len(panels), 3.0))
  FigureCanvasAgg(fig)
  if title:
    fig.suptitle(title)
  for i, (label, x) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    x = np.asarray(x)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=box)
    ax.imshow(counts.T, origin="lower", extent=(*box[0], *box[1]), cmap="magma",
              interpolation="nearest", aspect="equal")
    ax.set_xlim(box[0])
    ax.set_ylim(box[1])
    ax.set_title(label)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
