"""Image evaluation: FID of N-step samples, sample grids (`docs/method.md` §6).

FID compares Inception pool3 statistics of `config.eval.num_samples` samples, for every N in
`config.eval.sampling_steps`, with reference statistics of the training split:
`config.eval.fid_stats` if given (compute them with `experiments/fid_reference_stats.py`), otherwise computed once from
the configured dataset and cached as DIR/eval/fid_reference.npz (the JSON names the file used).
The reference holds the floor too (the FID of as many training images as samples, against the
whole split). `config.eval.ode_steps` adds the FID of Heun on the model's own velocity v_{t,t}, a
many-step baseline for the map. Grayscale images are repeated to three channels for the
Inception network.

Conditional runs (`docs/method.md` §9): the same FIDs for every guidance scale w of
`config.eval.guidance`, with labels drawn uniformly over the classes (the reference is the whole
training split) from one draw of noise and labels shared by every w and N; the map's at w when
guidance is learned (one call per step), else at w = 1 only, by `eval.sampler` (the flow map, or
the consistency sampler of single-time maps, re-noised per sample from its global index as an
unconditional run's), and the guided ODE's b^w = b(.|null) + w (b(.|c) - b(.|null)) (two calls
per step) at every w. Samples
(`--mode=sample`) are of `config.sample.label` (-1: every class in turn, one grid row per class)
at each w of `config.sample.guidance`.

Everything runs data-parallel over the mesh's `data` axis, on every device of every process
(`generate`, `sample_fid`): sample i's noise and label are drawn from its global index i, its
Inception features are computed on the device that generated it, and each process's float64
feature statistics are merged across processes, so every process ends with the same FID, and the
FID does not depend on the number of devices or processes (to float round-off). A sample count
that does not divide into the devices is padded: the padding rows are generated and dropped.
The reference statistics are computed unsharded, by every process (once per workdir).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flow_maps import data as data_lib
from flow_maps import flow_map as fm
from flow_maps import sampling


def rows_per_call(exp, batch_size: int) -> int:
  """Samples per sampler call: `batch_size` spread over the mesh's devices (at most
  `fid.FEATURE_CHUNK` per device, what the Inception network takes at once), rounded up to a
  multiple of the device count; the padding rows are generated and dropped (`local_rows`)."""
  from flow_maps.evaluation import fid
  devices = exp.mesh.size
  return devices * min(-(-batch_size // devices), fid.FEATURE_CHUNK)


def generate(v, exp, *, steps: int, num_samples: int, batch_size: int, key: jax.Array,
             ode: bool = False, labels: Optional[np.ndarray] = None,
             guidance: float = 1.0) -> Iterator[tuple[int, jax.Array]]:
  """(start, samples) pairs: the N-step samples of global indices start, start + 1, ... as one
  array [rows_per_call, H, W, C] in [-1, 1], split over the mesh's `data` axis (every device of
  every process generates its rows); rows at or past `num_samples` are padding.

  Sample i's noise (and its re-noising) is drawn from fold_in(key, i) alone (`sampling.row_keys`),
  and its label is labels[i], so the samples do not depend on the batch size or on the number of
  devices or processes; the same noise serves every N.
  ode=False: the N-step sampler of `eval.sampler` (the flow map, or consistency sampling);
  True: N Heun steps on the model's velocity v_{t,t}.
  Conditional: `labels` [num_samples] int (the same on every process) and `v` a function
  (labels [b], w [b]) -> velocity field (`sampling.guided_fields`), evaluated at w = `guidance`
  (an argument of the compiled sampler, so every w shares one compilation).
  """
  if ode:
    sampler = lambda v, x0, steps, keys: sampling.sample_heun(v, x0, steps)
  else:
    sampler = sampling.map_sampler(exp.config.eval.sampler, exp.interpolant)
  rows = rows_per_call(exp, batch_size)
  sharding = exp.batch_sharding

  def sample(start, c, w):
    index = jax.lax.with_sharding_constraint(start + jnp.arange(rows), sharding)
    keys = sampling.row_keys(key, index)
    x0 = sampling.row_noise(keys, exp.data_shape, exp.interpolant.sigma0)
    field = v if c is None else v(c, jnp.full((rows,), w, jnp.float32))
    renoise = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    return jnp.clip(sampler(field, x0, steps, renoise), -1.0, 1.0)

  jitted = jax.jit(sample, out_shardings=sharding)
  if labels is not None:
    padded = np.zeros(-(-num_samples // rows) * rows, np.int32)
    padded[:num_samples] = labels
  for start in range(0, num_samples, rows):
    c = None
    if labels is not None:
      part = padded[start:start + rows]
      c = jax.make_array_from_callback((rows,), sharding, lambda index: part[index])
    yield start, jitted(np.int32(start), c, np.float32(guidance))


def local_rows(x: jax.Array, start: int, num_samples: int) -> np.ndarray:
  """This process's rows of a batch from `generate` (or of its features) on the host, in
  order, without the padding rows (global index >= num_samples)."""
  if not isinstance(x, jax.Array):  # a host function's result (a stand-in): the whole batch
    return np.asarray(x)[:num_samples - start]
  shards = {s.index[0].start or 0: s for s in x.addressable_shards}  # replicas: keep one
  parts, index = [], []
  for first in sorted(shards):
    data = np.asarray(shards[first].data)
    parts.append(data)
    index.append(start + first + np.arange(data.shape[0]))
  keep = np.concatenate(index) < num_samples
  return np.concatenate(parts)[keep]


def all_rows(batches: Iterable[tuple[int, jax.Array]], num_samples: int) -> np.ndarray:
  """Every sample of `generate`, on the host of every process, [num_samples, H, W, C]."""
  from jax.experimental import multihost_utils
  out = []
  for start, x in batches:
    if jax.process_count() > 1:
      x = multihost_utils.process_allgather(x, tiled=True)
    out.append(np.asarray(x)[:num_samples - start])
  return np.concatenate(out)


def _rgb(images):
  return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def sample_fid(batches: Iterable[tuple[int, jax.Array]], num_samples: int, reference,
               features: Callable) -> float:
  """FID of `generate`'s samples against reference statistics: Inception features computed
  where the samples are, each process's rows accumulated in float64 on its host, then the
  statistics merged across processes (`fid.FeatureStats.across_processes`): every process
  returns the same number."""
  from flow_maps.evaluation import fid
  stats = fid.FeatureStats()
  for start, x in batches:
    stats.update(local_rows(features(_rgb(x)), start, num_samples))
  stats = stats.across_processes()
  return fid.frechet_distance(stats.mean, stats.cov, reference.mu, reference.sigma)


def reference_stats(config, cache_path: Optional[str] = None, batch_size: int = 500,
                    floor_count: Optional[int] = None, features: Optional[Callable] = None):
  """Inception statistics of the configured dataset's training split (all of it), with the floor:
  the FID of `floor_count` of its images (default `config.eval.num_samples`, or all of them if
  fewer), a seeded random subset, against the whole. One pass over the images serves both.
  `features`: images -> [B, d] (default: the Inception pool3 features of `fid.feature_fn`).
  """
  from flow_maps.evaluation import fid
  dataset = data_lib.image_dataset(config, "train")
  total = len(dataset)
  if floor_count is None:  # a set smaller than the sample count gets its whole-set floor
    floor_count = min(config.eval.num_samples, total)
  if not 2 <= floor_count <= total:
    raise ValueError(f"FID floor: needs 2 to {total} images of {config.data.name}, got "
                     f"{floor_count}")
  subset = np.zeros(total, bool)
  subset[np.random.RandomState(config.seed).permutation(total)[:floor_count]] = True
  features = features or fid.feature_fn()
  whole, part = fid.FeatureStats(), fid.FeatureStats()
  for start in range(0, total, batch_size):
    idx = np.arange(start, min(start + batch_size, total))
    f = np.asarray(jax.device_get(features(_rgb(dataset.source.get(idx)))))
    whole.update(f)
    part.update(f[subset[idx]])
  reference = whole.result()
  stats = fid.FIDStats(reference.mu, reference.sigma, reference.count,
                       floor=fid.frechet_distance(part.mean, part.cov, reference.mu,
                                                  reference.sigma),
                       floor_count=floor_count)
  if cache_path:
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    fid.save_stats(cache_path, stats)
  return stats


def check_ready(config) -> None:
  """Fails fast (before any training of a train_and_eval run) when the FID cannot be computed:
  the Inception weights are not converted (`fid.WeightsNotFoundError`). A missing
  `eval.fid_stats` file is a config error, checked by `validation.check_eval_files`."""
  from flow_maps.evaluation import fid
  fid.check_weights()


def _reference(config, workdir: str, features: Optional[Callable] = None):
  """(the FID reference statistics, their path): eval.fid_stats, or DIR/eval/fid_reference.npz,
  computed here if missing (by every process, written by process 0 only). `features`: a
  stand-in for the Inception features (tests); then the weights are not needed."""
  from flow_maps.evaluation import fid
  if features is None:
    check_ready(config)
  path = config.eval.fid_stats
  if path is None:
    path = os.path.join(workdir, "eval", "fid_reference.npz")
    if not os.path.exists(path):
      if jax.process_index() == 0:
        print(f"computing FID reference statistics of {config.data.name} (train) -> {path}",
              flush=True)
      return reference_stats(config, path if jax.process_index() == 0 else None,
                             features=features), path
  return fid.load_stats(path), path


def evaluate(v: fm.VelocityField, exp, config, *, key: jax.Array, workdir: str,
             features: Optional[Callable] = None) -> dict:
  """{"fid": {N: FID of the N-step map}, "ode_fid": {N: FID of N Heun steps on v_{t,t}},
  "num_samples": n, "fid_reference": path, "reference_count": m,
  "fid_floor": FID of n training images against the reference, or None if its statistics hold no
  floor for n samples}. Data-parallel over every device of every process (`sample_fid`);
  `features`: a stand-in for the Inception features (tests)."""
  from flow_maps.evaluation import fid
  reference, path = _reference(config, workdir, features)
  features = features or fid.feature_fn()

  def score(steps, ode):
    batches = generate(v, exp, steps=steps, num_samples=config.eval.num_samples,
                       batch_size=config.eval.batch_size, key=key, ode=ode)
    return sample_fid(batches, config.eval.num_samples, reference, features)

  scores = {str(n): score(n, ode=False) for n in config.eval.sampling_steps}
  ode_scores = {str(n): score(n, ode=True) for n in config.eval.get("ode_steps", ())}
  # The floor is comparable only at the same sample size.
  floor = reference.floor if reference.floor_count == config.eval.num_samples else None
  return {"fid": scores, "ode_fid": ode_scores, "ode_sampler": "heun",
          "num_samples": config.eval.num_samples, "fid_reference": path,
          "reference_count": reference.count, "fid_floor": floor}


def evaluate_guided(bind: Callable, exp, config, *, key: jax.Array, workdir: str,
                    features: Optional[Callable] = None) -> dict:
  """A conditional run's FIDs per guidance scale w of eval.guidance (labels uniform over the
  classes; see the module docstring): {"guidance": {"<w>": {"fid": {N: ...}, "ode_fid":
  {N: ...}}}, "learned_guidance", "label": -1, "sampler": the map's (`eval.sampler`), and the
  rest as `evaluate`}; "fid" is empty at w != 1 without learned guidance (the map learned
  w = 1 only). The top level also has the w = 1 row's "fid" and "ode_fid" when 1 is among the
  scales, as an unconditional result."""
  from flow_maps.evaluation import fid
  reference, path = _reference(config, workdir, features)
  features = features or fid.feature_fn()
  num_classes, learned = exp.conditioning.num_classes, exp.conditioning.learned_guidance
  map_scale = exp.conditioning.map_scale
  count = config.eval.num_samples
  labels = sampling.sample_labels(num_classes, -1, jax.random.fold_in(key, 2), count)
  map_field, ode_field = sampling.guided_fields(bind, num_classes, learned, map_scale)

  def score(field, steps, ode, w):
    batches = generate(field, exp, steps=steps, num_samples=count,
                       batch_size=config.eval.batch_size, key=key, ode=ode, labels=labels,
                       guidance=w)
    return sample_fid(batches, count, reference, features)

  result = {"guidance": {}}
  for w in config.eval.guidance:
    result["guidance"][f"{w:g}"] = {
        "fid": {str(n): score(map_field, n, False, w)
                for n in (config.eval.sampling_steps
                          if sampling.map_samples_at(learned, w, map_scale) else ())},
        "ode_fid": {str(n): score(ode_field, n, True, w) for n in config.eval.get("ode_steps", ())},
    }
  if "1" in result["guidance"]:
    result.update(result["guidance"]["1"])
  floor = reference.floor if reference.floor_count == count else None
  result.update(label=-1, learned_guidance=learned, sampler=exp.config.eval.sampler,
                ode_sampler="heun", num_samples=count, fid_reference=path,
                reference_count=reference.count, fid_floor=floor)
  return result


def format_guided_table(result: dict) -> str:
  lines = [f"{'w':>5}  {'N':>4}  {'FID':>10}", f"{'-' * 5}  {'-' * 4}  {'-' * 10}"]
  sampler = result.get("sampler", "flow_map")
  for w, row in result["guidance"].items():
    lines += [f"{w:>5}  {n:>4}  {value:>10.3f}  ({sampler}, {n} network calls)"
              for n, value in row["fid"].items()]
    lines += [f"{w:>5}  {n:>4}  {value:>10.3f}  (guided Heun on v_tt, {4 * int(n)} network calls)"
              for n, value in row["ode_fid"].items()]
  if not result["learned_guidance"]:
    lines.append("(guidance not learned: the map is at w = 1 only)")
  if result.get("fid_floor") is not None:
    lines.append(f"{'real':>11}  {result['fid_floor']:>10.3f}  (training images, the floor)")
  lines.append(f"({result['num_samples']} samples, labels uniform over the classes, against "
               f"{result['reference_count']} reference images)")
  return "\n".join(lines)


def format_table(result: dict) -> str:
  lines = [f"{'N':>4}  {'FID':>10}", f"{'-' * 4}  {'-' * 10}"]
  lines += [f"{n:>4}  {value:>10.3f}" for n, value in result["fid"].items()]
  lines += [f"{n:>4}  {value:>10.3f}  (Heun on v_tt, {2 * int(n)} network calls)"
            for n, value in result.get("ode_fid", {}).items()]
  if result.get("fid_floor") is not None:
    lines.append(f"{'real':>4}  {result['fid_floor']:>10.3f}  (training images, the floor)")
  lines.append(f"({result['num_samples']} samples against {result['reference_count']} reference "
               "images)")
  return "\n".join(lines)


def image_grid(images: np.ndarray, columns: Optional[int] = None) -> np.ndarray:
  """Tiles [n, H, W, C] images in [-1, 1] into one uint8 picture with a 1-pixel border."""
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, np.uint8)
  pixels = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = pixels[i]
  return grid[..., 0] if c == 1 else grid


def save_grid(images: np.ndarray, path: str, scale: int = 1,
              columns: Optional[int] = None) -> None:
  picture = Image.fromarray(image_grid(images, columns))
  if scale > 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  picture.save(path)


def write_samples(v: fm.VelocityField, exp, config, out: str, *, key: jax.Array) -> None:
  """n<N>.npz (float32 [count, H, W, C] in [-1, 1]) and n<N>.png for every N."""
  count = config.sample.num_samples
  scale = max(1, 256 // (exp.data_shape[0] * math.ceil(math.sqrt(count))))
  for n in config.sample.sampling_steps:
    images = all_rows(generate(v, exp, steps=n, num_samples=count,
                               batch_size=min(count, config.eval.batch_size), key=key), count)
    if jax.process_index() != 0:
      continue
    np.savez_compressed(os.path.join(out, f"n{n}.npz"), samples=images.astype(np.float32))
    save_grid(images, os.path.join(out, f"n{n}.png"), scale=scale)


def class_rows(num_classes: int, count: int) -> np.ndarray:
  """Labels for a grid with one row per class: ceil(count / num_classes) samples of class 0,
  then of class 1, ... (the last classes may have fewer), int32 [count]."""
  per_class = math.ceil(count / num_classes)
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)[:count]


def write_guided_samples(bind: Callable, exp, config, out: str, *, key: jax.Array) -> None:
  """A conditional run's samples: labels_<c|all>.npy (the labels, int32 [count]) and, for every
  w of sample.guidance and N of sample.sampling_steps, n<N>_label_<c|all>_w<w>.npz and .png (the
  names of the 2-D path), by eval.sampler (`generate`). sample.label = c: every sample of class c; -1
  ("all"): every class in turn (`class_rows`), so the PNG has one row per class."""
  count = config.sample.num_samples
  num_classes, learned = exp.conditioning.num_classes, exp.conditioning.learned_guidance
  map_scale = exp.conditioning.map_scale
  if config.sample.label < 0:
    labels, columns = class_rows(num_classes, count), math.ceil(count / num_classes)
  else:
    labels, columns = np.full((count,), config.sample.label, np.int32), None
  scale = max(1, 256 // (exp.data_shape[0] * (columns or math.ceil(math.sqrt(count)))))
  which = "all" if config.sample.label < 0 else str(config.sample.label)
  if jax.process_index() == 0:
    np.save(os.path.join(out, f"labels_{which}.npy"), labels)
  map_field, _ = sampling.guided_fields(bind, num_classes, learned, map_scale)
  for w in config.sample.guidance:
    if not sampling.map_samples_at(learned, w, map_scale):
      raise ValueError(f"sample.guidance: the map learned w = {map_scale:g} only "
                       f"(guidance.learned is "
                       f"False), got {w:g}")
    for n in config.sample.sampling_steps:
      images = all_rows(generate(map_field, exp, steps=n, num_samples=count,
                                 batch_size=min(count, config.eval.batch_size), key=key,
                                 labels=labels, guidance=w), count)
      if jax.process_index() != 0:
        continue
      name = f"n{n}_label_{which}_w{w:g}"
      np.savez_compressed(os.path.join(out, name + ".npz"), samples=images.astype(np.float32))
      save_grid(images, os.path.join(out, name + ".png"), scale=scale, columns=columns)
