"""Image evaluation: FID of N-step samples, sample grids (`method.md` §6).

FID compares Inception pool3 statistics of `config.eval.num_samples` samples, for every N in
`config.eval.steps`, with reference statistics of the training split: `config.eval.fid_stats`
if given (compute them with `experiments/fid_reference_stats.py`), otherwise computed once from
the configured dataset and cached as DIR/eval/fid_reference.npz (the JSON names the file used).
Grayscale images are repeated to three channels for the Inception network.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flow_maps import data as data_lib
from flow_maps import flow_map as fm
from flow_maps import sampling


def generate(v: fm.VelocityField, exp, *, steps: int, num_samples: int, batch_size: int,
             key: jax.Array) -> Iterator[np.ndarray]:
  """Batches of N-step samples in [-1, 1], float32 [b, H, W, C]; the same noise for every N."""
  sample = jax.jit(lambda x0: jnp.clip(sampling.sample_flow_map(v, x0, steps), -1.0, 1.0))
  for start in range(0, num_samples, batch_size):
    n = min(batch_size, num_samples - start)
    x0 = sampling.noise(jax.random.fold_in(key, start), n, exp.data_shape, exp.interpolant.sigma0)
    yield np.asarray(sample(x0))


def _rgb(images: np.ndarray) -> np.ndarray:
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _dataset_batches(dataset, num_images: int, batch_size: int) -> Iterator[np.ndarray]:
  """The first `num_images` of the dataset in its stored order (no shuffling)."""
  for start in range(0, num_images, batch_size):
    idx = np.arange(start, min(start + batch_size, num_images))
    yield _rgb(dataset.source.get(idx))


def reference_stats(config, cache_path: Optional[str] = None, batch_size: int = 500):
  """Inception statistics of the configured dataset's training split (all of it)."""
  from flow_maps.evaluation import fid
  dataset = data_lib.image_dataset(config, "train")
  stats = fid.compute_stats(_dataset_batches(dataset, len(dataset), batch_size))
  if cache_path:
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    fid.save_stats(cache_path, stats)
  return stats


def evaluate(v: fm.VelocityField, exp, config, *, key: jax.Array, workdir: str) -> dict:
  """{"fid": {N: FID}, "num_samples": n, "fid_reference": path, "reference_count": m}."""
  from flow_maps.evaluation import fid
  path = config.eval.fid_stats
  if path is None:
    path = os.path.join(workdir, "eval", "fid_reference.npz")
    if not os.path.exists(path):
      print(f"computing FID reference statistics of {config.data.name} (train) -> {path}",
            flush=True)
      reference_stats(config, path)
  elif not os.path.exists(path):
    raise FileNotFoundError(
        f"eval.fid_stats: no file {path}; compute it with python experiments/fid_reference_stats.py "
        f"--config=<this config> --out={path}")
  reference = fid.load_stats(path)
  features = fid.feature_fn()
  scores = {}
  for n in config.eval.steps:
    batches = (_rgb(b) for b in generate(v, exp, steps=n, num_samples=config.eval.num_samples,
                                         batch_size=config.eval.batch_size, key=key))
    scores[str(n)] = fid.compute_fid_from_samples(batches, reference, features)
  return {"fid": scores, "num_samples": config.eval.num_samples, "fid_reference": path,
          "reference_count": reference.count}


def format_table(result: dict) -> str:
  lines = [f"{'N':>4}  {'FID':>10}", f"{'-' * 4}  {'-' * 10}"]
  lines += [f"{n:>4}  {value:>10.3f}" for n, value in result["fid"].items()]
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


def save_grid(images: np.ndarray, path: str, scale: int = 1) -> None:
  picture = Image.fromarray(image_grid(images))
  if scale > 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  picture.save(path)


def write_samples(v: fm.VelocityField, exp, config, out: str, *, key: jax.Array) -> None:
  """n<N>.npz (float32 [count, H, W, C] in [-1, 1]) and n<N>.png for every N."""
  count = config.sample.num_samples
  scale = max(1, 256 // (exp.data_shape[0] * math.ceil(math.sqrt(count))))
  for n in config.sample.steps:
    images = np.concatenate(list(generate(v, exp, steps=n, num_samples=count,
                                          batch_size=min(count, config.eval.batch_size),
                                          key=key)))
    np.savez_compressed(os.path.join(out, f"n{n}.npz"), samples=images.astype(np.float32))
    save_grid(images, os.path.join(out, f"n{n}.png"), scale=scale)
