"""EDM2's magnitude-preserving UNet as a two-time flow-map network v_{s,t}(x).

`docs/method.md` §2 (the network answers v_{s,t}), §4 (the learned weight), §5 (published settings).

The architecture is the UNet of Karras et al. 2024 ("Analyzing and improving the training dynamics
of diffusion models", `training/networks_edm2.py` of NVlabs/edm2), written for NHWC arrays:
  - MPConv: convolution / linear layer whose weight is normalised per output unit in every
    forward pass and scaled by 1 / sqrt(fan_in), so it preserves magnitudes (EDM2 eq. 47);
  - mp_silu, mp_sum, mp_cat: SiLU / sum / concatenation rescaled to unit magnitude (eq. 81, 88, 103);
  - pixel norm on the encoder's main path and on attention's q, k, v; cosine attention;
  - resampling by 2x2 average pooling (down) and nearest neighbours (up), EDM2's [1, 1] filter;
  - MP Fourier features of the time (eq. 75); no biases, no group norm; the output layer's "gain"
    is a learned scalar initialised to 0, so v = 0 at start;
  - activations clipped to +-256 after every block.

Two times instead of one noise level (the published flow-map code's choice): the network is
conditioned on (s, t - s). Each is embedded by its own MP Fourier features and its own MPConv
linear layer, the two embeddings are combined by mp_sum (balance 0.5) and passed through mp_silu;
this takes the place of EDM2's noise embedding (the class path is below). The published code uses
deterministic sinusoidal features here; we keep EDM2's random Fourier features, whose frequencies
and phases are constants drawn from NumPy's legacy `RandomState` (its streams are frozen, so the
constants never change between versions and are not parameters), at a lower bandwidth than EDM2's
(`FOURIER_BANDWIDTH`: the times lie in [0, 1], and the jvp objectives differentiate through them).

Input and output scaling: v_{s,t}(x) = sigma0 * F(x / sigma0, s, t - s), with F the UNet; the
published code does the same with sigma_data = sigma0 = 0.5.

Class labels (`num_classes` > 0, `docs/method.md` §9), EDM2's own path: the label's one-hot
vector, scaled by sqrt(its length) to unit RMS, goes through an MPConv linear layer (so class c's
embedding is row c of the normalised weight, of unit magnitude on average), and is mp_sum'ed into
the time embedding with balance 0.5 before the mp_silu. The null label (index num_classes) is its own
one-hot row, not EDM2's all-zero vector: with zeros, mp_sum(emb, 0) would shrink the null rows'
embedding by 1 / sqrt(2) and give the unconditional model a fixed, unlearned condition, while the
rest of this code (`flow_map.Condition`, the MLP's embedding, label dropout) treats the null label
as one more learned class; as a row of its own it is a unit-magnitude learned embedding like the
others.

Learned guidance (`learn_guidance`): the scale w [B] moves the label's embedding along the guidance
line, mp_sum(e_null, e_c, t=w) = ((1 - w) e_null + w e_c) / sqrt((1 - w)^2 + w^2), the
magnitude-preserving version of the MLP's e_null + w (e_c - e_null): w = 0 gives the null label's
embedding (the unconditional velocity, which guidance at w = 0 is) and w = 1 the label's, from the
first step (the null label's rows are always given w = 1, by label dropout and by the guided
samplers, where this is e_null exactly). MP Fourier features of w (the times' bandwidth, their
own constants) through their own MPConv are mp_sum'ed into that (balance 0.5), so that w is an
input in its own right too. The condition then enters as above.
Unconditional UNets (num_classes = 0) have none of these parameters and compute exactly what they
did before.

Learned weight (`docs/method.md` §4, `learn_weight=True`), as the paper's release builds it
(`log_weight_head="release"`, the default): w(s, t) = MPConv(mp_sum(Fourier(s), Fourier(t))), a
unit-gain linear layer on MP Fourier features of the two times themselves, like EDM2's
log-variance head; w is a nonzero function of (s, t) at initialisation, as in the release. The
release's features are sinusoidal; ours are the same random Fourier features as the network's
(`docs/method.md` §10). `log_weight_head="zero_start"` is this code's earlier head, kept as an option:
the features of (s, t - s), the network's own coordinates, and a scalar `gain` initialised to 0
so that w = 0 at start. The two have different parameters (only zero_start has "gain"), so a
checkpoint of one never restores into the other.

Forced weight normalisation (EDM2 eq. 66): PyTorch's EDM2 renormalises its weights in place in the
forward pass; in JAX the train step calls `normalize_weights(params)` after every optimiser update.
It touches every leaf named "weight" (the MPConv kernels, shaped [in, out] or [kh, kw, in, out])
and nothing else (the scalar gains "emb_gain", "out_gain", "gain" are left alone). Because every
forward pass also normalises the weight, the network's output does not depend on a weight's scale;
the forced normalisation keeps the effective learning rate constant. EMA parameters need not be
renormalised for the same reason.

Compute dtype: parameters, the time embeddings and the output are float32; with
`compute_dtype=bfloat16` the activations and convolutions run in bfloat16.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

CLIP_ACTIVATIONS = 256.0
EPS = 1e-4
# Frequencies of the times' Fourier features ~ N(0, 0.25^2) cycles per unit time. EDM2 uses 1 on
# c_noise = ln(sigma) / 4, which spans about 2.7 units; the published flow-map code uses
# sinusoidal features of at most 1 radian per unit time. d/dt X goes through these features, so
# their frequencies bound how fast v may vary in t. Measured with LSD at RAdam 1e-2: on the 8x8
# digits bandwidth 1 diverged within 1,000 steps; on mnist5k (`configs/mnist_lsd.py`, two seeds
# each) bandwidth 1 blew up between steps 300 and 400 (diagonal loss 144-158 at 0.25 vs 4e4-2e6
# at 1 by step 500) while 0.25 trained stably (`docs/images_cpu.md`).
FOURIER_BANDWIDTH = 0.25


# ------------------------------------------------------------------------------------------------
# Magnitude-preserving primitives.


def normalize(x: Array, axis: Sequence[int] | int, eps: float = EPS) -> Array:
  """EDM2's `normalize`: x / (eps + |x| / sqrt(n)), |x| over `axis` (n elements), in float32.

  Each slice then has a root-mean-square of (almost) 1, i.e. a norm of sqrt(n).
  """
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  n = math.prod(x.shape[a] for a in axis)
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
  norm = eps + norm / math.sqrt(n)
  return x / norm.astype(x.dtype)


def mp_silu(x: Array) -> Array:
  """SiLU divided by its output magnitude for unit normal input (EDM2 eq. 81)."""
  return jax.nn.silu(x) / 0.596


def mp_sum(a: Array, b: Array, t: float = 0.5) -> Array:
  """(1 - t) a + t b, rescaled to unit magnitude (EDM2 eq. 88)."""
  return (a + t * (b - a)) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: Array, b: Array, t: float = 0.5) -> Array:
  """Channel (last-axis) concatenation weighted by t and kept at unit magnitude (EDM2 eq. 103)."""
  na, nb = a.shape[-1], b.shape[-1]
  c = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
  wa = c / math.sqrt(na) * (1 - t)
  wb = c / math.sqrt(nb) * t
  return jnp.concatenate([wa * a, wb * b], axis=-1)


def resample(x: Array, mode: str) -> Array:
  """EDM2's resampling with the [1, 1] filter: 2x2 average pooling ("down"), nearest ("up")."""
  if mode == "keep":
    return x
  b, h, w, c = x.shape
  if mode == "down":
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  if mode == "up":
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  raise ValueError(f"unknown resample mode {mode!r}")


def _weight_init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """Unit normal, already on EDM2's sphere (as after the first forced normalisation)."""
  return normalize(jax.random.normal(key, shape, dtype), axis=tuple(range(len(shape) - 1)))


class MPConv(nn.Module):
  """Magnitude-preserving convolution (kernel_size (kh, kw)) or linear layer (kernel_size ()).

  The weight "weight" has shape [*kernel_size, in, out]; every forward pass normalises it per
  output unit and multiplies it by gain / sqrt(fan_in) (EDM2 eq. 47, 66).
  """

  features: int
  kernel_size: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: Array, gain: Array | float = 1.0) -> Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    weight = self.param("weight", _weight_init, shape)
    fan_in = math.prod(shape[:-1])
    w = normalize(weight.astype(jnp.float32), axis=tuple(range(len(shape) - 1)))
    w = (w * (gain / math.sqrt(fan_in))).astype(x.dtype)
    if not self.kernel_size:
      return x @ w
    return jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _fourier_constants(num_channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  # Legacy RandomState: its streams are frozen by NumPy, so these never change.
  rng = np.random.RandomState(seed)
  freqs = 2 * np.pi * rng.randn(num_channels)
  phases = 2 * np.pi * rng.rand(num_channels)
  return freqs.astype(np.float32), phases.astype(np.float32)


class MPFourier(nn.Module):
  """Magnitude-preserving Fourier features sqrt(2) cos(2 pi (f t + p)) (EDM2 eq. 75).

  f ~ N(0, bandwidth^2) and p ~ U[0, 1) are constants fixed by `seed`, not parameters.
  """

  num_channels: int
  bandwidth: float = 1.0
  seed: int = 0

  def __call__(self, t: Array) -> Array:
    freqs, phases = _fourier_constants(self.num_channels, self.seed)
    y = t.astype(jnp.float32)[:, None] * (self.bandwidth * freqs) + phases
    return jnp.sqrt(2.0) * jnp.cos(y)


# ------------------------------------------------------------------------------------------------
# The UNet.


class Block(nn.Module):
  """EDM2's encoder/decoder block (EDM2 Figure 21) with optional cosine self-attention."""

  out_channels: int
  flavor: str = "enc"  # enc | dec
  resample_mode: str = "keep"  # keep | up | down
  attention: bool = False
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    out = self.out_channels
    # Main branch.
    x = resample(x, self.resample_mode)
    if self.flavor == "enc":
      if x.shape[-1] != out:
        x = MPConv(out, (1, 1), name="conv_skip")(x)
      x = normalize(x, axis=-1)  # pixel norm

    # Residual branch, modulated by the time embedding.
    y = MPConv(out, (3, 3), name="conv_res0")(mp_silu(x))
    emb_gain = self.param("emb_gain", nn.initializers.zeros, ())
    c = MPConv(out, name="emb_linear")(emb, gain=emb_gain) + 1.0
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    if self.dropout:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = MPConv(out, (3, 3), name="conv_res1")(y)

    # Connect the branches.
    if self.flavor == "dec" and x.shape[-1] != out:
      x = MPConv(out, (1, 1), name="conv_skip")(x)
    x = mp_sum(x, y, self.res_balance)

    # Cosine self-attention: q, k, v pixel-normalised per head.
    heads = out // self.channels_per_head if self.attention else 0
    if heads:
      b, h, w, _ = x.shape
      qkv = MPConv(3 * out, (1, 1), name="attn_qkv")(x)
      qkv = normalize(qkv.reshape(b, h * w, heads, -1, 3), axis=3)
      q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
      logits = jnp.einsum("bqhc,bkhc->bhqk", q, k / math.sqrt(q.shape[-1]))
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
      y = jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(x.shape)
      y = MPConv(out, (1, 1), name="attn_proj")(y)
      x = mp_sum(x, y, self.attn_balance)

    return jnp.clip(x, -CLIP_ACTIVATIONS, CLIP_ACTIVATIONS)


class EDM2UNet(nn.Module):
  """F(x, s, d): the EDM2 UNet on x [B, H, W, C] with the two times s and d = t - s, both [B]."""

  img_resolution: int
  img_channels: int
  model_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 3, 4)
  num_blocks: int = 3
  attn_resolutions: tuple[int, ...] = (16, 8)
  channels_per_head: int = 64
  dropout: float = 0.0
  fourier_bandwidth: float = FOURIER_BANDWIDTH
  concat_balance: float = 0.5
  compute_dtype: Any = jnp.float32
  num_classes: int = 0
  learn_guidance: bool = False
  label_balance: float = 0.5  # EDM2's
  guidance_balance: float = 0.5

  def condition_embedding(self, label: Array, guidance: Array | None, cemb: int,
                          cnoise: int) -> Array:
    """The label's (and w's) unit-magnitude embedding [B, cemb] (see the module docstring)."""
    classes = self.num_classes + 1  # the null label is index num_classes, a row of its own
    emb_label = MPConv(cemb, name="emb_label")
    scale = math.sqrt(classes)  # a one-hot vector times sqrt(length) has unit RMS
    e = emb_label(jax.nn.one_hot(label, classes, dtype=jnp.float32) * scale)
    if not self.learn_guidance:
      return e
    w = guidance.astype(jnp.float32)[:, None]
    null = jnp.full_like(label, self.num_classes)
    e_null = emb_label(jax.nn.one_hot(null, classes, dtype=jnp.float32) * scale)
    e = (e_null + w * (e - e_null)) / jnp.sqrt((1 - w) ** 2 + w ** 2)  # mp_sum with t = w
    emb_w = MPConv(cemb, name="emb_guidance")(
        MPFourier(cnoise, self.fourier_bandwidth, seed=4, name="fourier_guidance")(w[:, 0]))
    return mp_sum(e, emb_w, self.guidance_balance)

  @nn.compact
  def __call__(self, x: Array, s: Array, d: Array, train: bool, label: Array | None = None,
               guidance: Array | None = None) -> Array:
    cblock = [self.model_channels * m for m in self.channel_mult]
    cnoise = cblock[0]
    cemb = max(cblock)
    block = dict(channels_per_head=self.channels_per_head, dropout=self.dropout)

    # Embedding of the two times (float32): separate features and linear layers, then mp_sum;
    # the class (and guidance) embedding, if any, mp_sum'ed in as EDM2 does its class's.
    emb_s = MPConv(cemb, name="emb_s")(
        MPFourier(cnoise, self.fourier_bandwidth, seed=0, name="fourier_s")(s))
    emb_d = MPConv(cemb, name="emb_gap")(
        MPFourier(cnoise, self.fourier_bandwidth, seed=1, name="fourier_gap")(d))
    emb = mp_sum(emb_s, emb_d, 0.5)
    if self.num_classes:
      emb = mp_sum(emb, self.condition_embedding(label, guidance, cemb, cnoise),
                   self.label_balance)
    emb = mp_silu(emb)

    # Encoder; a constant-one channel is appended as in EDM2.
    x = x.astype(self.compute_dtype)
    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
    skips = []
    for level, channels in enumerate(cblock):
      res = self.img_resolution >> level
      if level == 0:
        x = MPConv(channels, (3, 3), name=f"enc_{res}x{res}_conv")(x)
      else:
        x = Block(x.shape[-1], "enc", "down", name=f"enc_{res}x{res}_down", **block)(x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        x = Block(channels, "enc", attention=res in self.attn_resolutions,
                  name=f"enc_{res}x{res}_block{idx}", **block)(x, emb, train)
        skips.append(x)

    # Decoder.
    for level, channels in reversed(list(enumerate(cblock))):
      res = self.img_resolution >> level
      if level == len(cblock) - 1:
        x = Block(x.shape[-1], "dec", attention=True, name=f"dec_{res}x{res}_in0", **block)(
            x, emb, train)
        x = Block(x.shape[-1], "dec", name=f"dec_{res}x{res}_in1", **block)(x, emb, train)
      else:
        x = Block(x.shape[-1], "dec", "up", name=f"dec_{res}x{res}_up", **block)(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = mp_cat(x, skips.pop(), t=self.concat_balance)
        x = Block(channels, "dec", attention=res in self.attn_resolutions,
                  name=f"dec_{res}x{res}_block{idx}", **block)(x, emb, train)

    out_gain = self.param("out_gain", nn.initializers.zeros, ())
    x = MPConv(self.img_channels, (3, 3), name="out_conv")(x, gain=out_gain)
    return x.astype(jnp.float32)


# The learned log-weight heads (`LogWeightHead`, `model.log_weight_head`).
WEIGHT_HEADS = ("release", "zero_start")


class LogWeightHead(nn.Module):
  """The learned log-weight w(s, t) (`docs/method.md` §4), in one of `WEIGHT_HEADS`:
    - "release" (the paper's release): w = MPConv(mp_sum(Fourier(s), Fourier(t))), gain 1, so w
      is a nonzero function of the times at initialisation;
    - "zero_start": w = gain * MPConv(mp_sum(Fourier(s), Fourier(t - s))), gain = 0 at start.
  """

  channels: int = 128
  fourier_bandwidth: float = FOURIER_BANDWIDTH
  kind: str = "release"

  @nn.compact
  def __call__(self, s: Array, t: Array) -> Array:
    if self.kind not in WEIGHT_HEADS:
      raise ValueError(f"unknown weight head {self.kind!r}; allowed: {WEIGHT_HEADS}")
    fourier_s = MPFourier(self.channels, self.fourier_bandwidth, seed=2, name="fourier_s")
    # The same constants for the second time in both kinds; only its argument differs.
    fourier_2 = MPFourier(self.channels, self.fourier_bandwidth, seed=3, name="fourier_gap")
    if self.kind == "release":
      return MPConv(1, name="linear")(mp_sum(fourier_s(s), fourier_2(t)))[:, 0]
    gain = self.param("gain", nn.initializers.zeros, ())
    return MPConv(1, name="linear")(mp_sum(fourier_s(s), fourier_2(t - s)), gain=gain)[:, 0]


class UNet(nn.Module):
  """The flow-map network v_{s,t}(x) = sigma0 * F(x / sigma0, s, t - s) (`docs/method.md` §2, §5).

  `__call__(s, t, x, train)` returns v with the shape of x [B, H, W, C] in float32;
  `log_weight(s, t)` returns w(s, t) [B] when `learn_weight` (`docs/method.md` §4).
  Dropout (train=True) draws from the "dropout" RNG stream. Conditional (`num_classes` > 0) it
  also takes `label=` [B] int (num_classes: the null label) and, with `learn_guidance`,
  `guidance=` [B], the scale w (`docs/method.md` §9).
  """

  img_resolution: int
  img_channels: int
  model_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 3, 4)
  num_blocks: int = 3
  attn_resolutions: tuple[int, ...] = (16, 8)
  channels_per_head: int = 64
  dropout: float = 0.0
  fourier_bandwidth: float = FOURIER_BANDWIDTH
  compute_dtype: Any = jnp.float32
  sigma0: float = 1.0
  learn_weight: bool = False
  logvar_channels: int = 128
  log_weight_head: str = "release"  # one of WEIGHT_HEADS
  num_classes: int = 0
  learn_guidance: bool = False

  def setup(self):
    levels = len(self.channel_mult)
    if self.img_resolution % (1 << (levels - 1)):
      raise ValueError(f"image resolution {self.img_resolution} is not divisible by "
                       f"2^{levels - 1} ({levels} resolutions)")
    self.net = EDM2UNet(
        img_resolution=self.img_resolution, img_channels=self.img_channels,
        model_channels=self.model_channels, channel_mult=tuple(self.channel_mult),
        num_blocks=self.num_blocks, attn_resolutions=tuple(self.attn_resolutions),
        channels_per_head=self.channels_per_head, dropout=self.dropout,
        fourier_bandwidth=self.fourier_bandwidth, compute_dtype=self.compute_dtype,
        num_classes=self.num_classes, learn_guidance=self.learn_guidance)
    if self.learn_guidance and not self.num_classes:
      raise ValueError("UNet: learn_guidance needs labels (num_classes > 0)")
    if self.learn_weight:
      self.weight_head = LogWeightHead(self.logvar_channels, self.fourier_bandwidth,
                                       self.log_weight_head)

  def __call__(self, s: Array, t: Array, x: Array, train: bool = False,
               label: Array | None = None, guidance: Array | None = None) -> Array:
    if x.shape[1:] != (self.img_resolution, self.img_resolution, self.img_channels):
      raise ValueError(f"UNet built for {self.img_resolution}x{self.img_resolution}x"
                       f"{self.img_channels} images, got x of shape {x.shape}")
    from flow_maps.networks.condition import check_condition
    check_condition(self, label, guidance)
    s = s.astype(jnp.float32)
    t = t.astype(jnp.float32)
    conditional = {} if label is None else dict(label=label, guidance=guidance)
    F = self.net(x / self.sigma0, s, t - s, train, **conditional)
    return (self.sigma0 * F).astype(x.dtype)

  def log_weight(self, s: Array, t: Array) -> Array:
    return self.weight_head(s.astype(jnp.float32), t.astype(jnp.float32))


# ------------------------------------------------------------------------------------------------
# Forced weight normalisation.


def _is_mp_weight(path) -> bool:
  last = path[-1]
  return getattr(last, "key", None) == "weight"


def normalize_weights(params: Any) -> Any:
  """EDM2's forced weight normalisation (eq. 66), to apply after every optimiser update.

  Every MPConv weight (a leaf named "weight", [in, out] or [kh, kw, in, out]) is renormalised per
  output unit (last axis) to a norm of sqrt(fan_in), exactly as EDM2's `normalize`; every other
  leaf is returned unchanged. Works on any nesting of dicts (the flax parameter tree, an EMA).
  Like EDM2's, it divides by eps + |w| / sqrt(fan_in) with eps = 1e-4, so a row of RMS r lands
  within eps / r of the fixed point (RMS 1 - eps) and is idempotent from the next step on.
  """

  def fn(path, leaf):
    if _is_mp_weight(path):
      return normalize(leaf, axis=tuple(range(leaf.ndim - 1))).astype(leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(fn, params)


# ------------------------------------------------------------------------------------------------
# Presets and construction from a config.

PRESETS = {
    # CIFAR-10 (`docs/method.md` §5): 128 channels, [2, 2, 2], 4 blocks, attention at 16, dropout 0.13.
    "cifar10": dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                    attn_resolutions=(16,), dropout=0.13, channels_per_head=64),
    # CelebA-64 (`docs/method.md` §5): 128 channels, [1, 2, 3, 4], 3 blocks, attention at 16 and 8.
    # No dropout is published for it; EDM2's 64x64 configurations use none at this size.
    "celeba64": dict(model_channels=128, channel_mult=(1, 2, 3, 4), num_blocks=3,
                     attn_resolutions=(16, 8), dropout=0.0, channels_per_head=64),
    # CPU tests and the digits demo: 16 and 32 channels, one block per resolution, two heads of
    # 16 channels where there is attention (at 4x4 and, always, in the decoder's first block).
    "tiny": dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                 dropout=0.0, channels_per_head=16),
}

# Parameter counts reported by the EDM2-based flow-map paper, for `tests/test_unet.py`.
PAPER_PARAMETER_COUNTS = {"cifar10": 54.7e6, "celeba64": 124.3e6}

ARCHITECTURE_FIELDS = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions",
                       "dropout", "channels_per_head", "fourier_bandwidth", "logvar_channels",
                       "log_weight_head")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def unet_preset(name: str) -> dict[str, Any]:
  """The architecture of a preset: "cifar10", "celeba64" or "tiny" (a fresh dict)."""
  if name not in PRESETS:
    raise ValueError(f"unknown UNet preset {name!r}; allowed: {sorted(PRESETS)}")
  return dict(PRESETS[name])


def resolve_architecture(model_config: Any) -> dict[str, Any]:
  """The preset `model_config.preset` with every architecture field of `model_config` that is
  set (not None) overriding it: the exact architecture, for writing into a run's directory."""
  arch = unet_preset(model_config.preset)
  for field in ARCHITECTURE_FIELDS:
    value = model_config.get(field, None)
    if value is not None:
      arch[field] = tuple(value) if isinstance(value, (list, tuple)) else value
  return arch


def unet_from_config(model_config: Any, data_shape: Sequence[int], sigma0: float,
                     learn_weight: bool = False, num_classes: int = 0,
                     learn_guidance: bool = False) -> UNet:
  """The UNet of a config's `model` section for images of shape (H, W, C) (`config_defaults`),
  with the log-weight head if `learn_weight` (objective.weighting = 'learned'), the class input
  if `num_classes` > 0 and the guidance input if `learn_guidance`.

  Reads model.preset, the optional overrides in `ARCHITECTURE_FIELDS` and model.compute_dtype
  ("float32" | "bfloat16").
  """
  h, w, c = data_shape
  if h != w:
    raise ValueError(f"model: the UNet needs square images, got data shape {tuple(data_shape)}")
  dtype_name = model_config.get("compute_dtype", "float32")
  if dtype_name not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype: unknown dtype {dtype_name!r}; "
                     f"allowed: {sorted(COMPUTE_DTYPES)}")
  return UNet(img_resolution=h, img_channels=c, compute_dtype=COMPUTE_DTYPES[dtype_name],
              sigma0=float(sigma0), learn_weight=learn_weight, num_classes=int(num_classes),
              learn_guidance=bool(learn_guidance), **resolve_architecture(model_config))


def parameter_shapes(module: UNet) -> Any:
  """The parameter tree of a UNet as `jax.ShapeDtypeStruct`s, by shape evaluation only: the
  same tree as `FlowMapModel(module).init` (the weight head's, the class and guidance
  embeddings' included where the module has them)."""
  x = jax.ShapeDtypeStruct((1, module.img_resolution, module.img_resolution,
                            module.img_channels), jnp.float32)
  s = jax.ShapeDtypeStruct((1,), jnp.float32)

  def init(key, s, x):
    conditional = {}
    if module.num_classes:
      conditional["label"] = jnp.full((1,), module.num_classes, jnp.int32)
      if module.learn_guidance:
        conditional["guidance"] = jnp.ones((1,), jnp.float32)

    def both(m, s, x):
      v = m(s, s, x, **conditional)
      if m.learn_weight:
        m.log_weight(s, s)
      return v
    return module.init({"params": key, "dropout": key}, s, x, method=both)["params"]

  return jax.eval_shape(init, jax.random.key(0), s, x)


def count_parameters(module: UNet) -> int:
  """The number of parameters of a UNet, by shape evaluation only (nothing is allocated)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(parameter_shapes(module)))


def init_params(module: UNet, seed: int) -> Any:
  """Initial parameters drawn on the host: the same tree and law as `FlowMapModel.init`.

  Every MPConv weight is unit normal, renormalised per output unit (EDM2's sphere); every gain
  is 0. Why a second initialiser: XLA:CPU compiles one threefry hash per parameter, so
  `jax.jit(module.init)` takes about 10 s to compile for the tiny preset and minutes for the
  CIFAR-10 one on CPU; this takes milliseconds to a second. Each weight's stream is NumPy's
  legacy RandomState seeded with (seed, crc32 of the parameter's path), so it is the same on
  every host and every NumPy version.
  """

  def fn(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if _is_mp_weight(path):
      rng = np.random.RandomState([seed, zlib.crc32(name.encode())])
      w = rng.standard_normal(leaf.shape)
      axes = tuple(range(w.ndim - 1))
      norm = np.sqrt(np.sum(w * w, axis=axes, keepdims=True) / math.prod(w.shape[:-1]))
      return jnp.asarray((w / (EPS + norm)).astype(np.float32))
    if leaf.shape != ():
      raise ValueError(f"init_params: unexpected parameter {name} of shape {leaf.shape}")
    return jnp.zeros((), leaf.dtype)  # the gains: emb_gain, out_gain, the weight head's gain

  return jax.tree_util.tree_map_with_path(fn, parameter_shapes(module))
