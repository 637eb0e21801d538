"""The published 2-D network: an MLP on [s, t, x / sigma0] (`docs/method.md` §5)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class LogWeight(nn.Module):
  """The learned log-weight w(s, t) of `docs/method.md` §4: a small MLP on the two times (s, t),
  its output layer zero-initialised (w = 0 at start). The release's 2-D MLP has no learned weight
  to match (its head returns a constant, §10); the UNet's head follows the release's image
  network (`unet.LogWeightHead`)."""

  width: int = 128

  @nn.compact
  def __call__(self, s: jax.Array, t: jax.Array) -> jax.Array:
    h = jnp.stack([s, t], axis=-1)
    h = nn.gelu(nn.Dense(self.width)(h))
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[..., 0]


class MLP(nn.Module):
  """v_{s,t}(x) = sigma0 * MLP([s, t, x / sigma0]): `depth` hidden layers of `width`, GELU.

  Conditional (`num_classes` > 0, `docs/method.md` §9): a learned embedding of the label (one
  row per class and one for the null label, index num_classes) is added to the first hidden
  layer's pre-activation, the same as a one-hot label among the inputs. With `learn_guidance`
  the guidance scale w moves the embedding along the guidance line, e_null + w (e_c - e_null),
  and a learned embedding of w is added: at w = 0 every label must give the unconditional
  velocity, and this puts it next to the null label's input from the start (w as one more
  input, beside s and t, learned that slowly: map error 0.6 at w = 0 after 600 steps of the
  guidance test, against the ODE's 0.04).
  Unconditional networks have neither, and the same parameters as before.
  """

  out_dim: int = 2
  width: int = 512
  depth: int = 5
  sigma0: float = 1.0
  learn_weight: bool = False
  num_classes: int = 0
  learn_guidance: bool = False

  def setup(self):
    self.hidden = [nn.Dense(self.width) for _ in range(self.depth)]
    self.out = nn.Dense(self.out_dim)
    if self.learn_weight:
      self.weight_head = LogWeight()
    if self.num_classes:
      self.label_embedding = nn.Embed(self.num_classes + 1, self.width)
    if self.learn_guidance:
      self.guidance_embedding = nn.Dense(self.width)

  def __call__(self, s: jax.Array, t: jax.Array, x: jax.Array, train: bool = False,
               label: Optional[jax.Array] = None,
               guidance: Optional[jax.Array] = None) -> jax.Array:
    del train  # no dropout in the 2-D network
    from flow_maps.networks.condition import check_condition
    check_condition(self, label, guidance)
    flat = x.reshape((x.shape[0], -1))
    h = jnp.concatenate([s[:, None], t[:, None], flat / self.sigma0], axis=-1)
    condition = None
    if self.num_classes:
      condition = self.label_embedding(label)
    if self.learn_guidance:
      w = guidance.astype(flat.dtype)[:, None]
      null = self.label_embedding(jnp.full_like(label, self.num_classes))
      condition = null + w * (condition - null) + self.guidance_embedding(w)
    for i, layer in enumerate(self.hidden):
      h = layer(h)
      if i == 0 and condition is not None:
        h = h + condition
      h = nn.gelu(h)
    return (self.sigma0 * self.out(h)).reshape(x.shape)

  def log_weight(self, s: jax.Array, t: jax.Array) -> jax.Array:
    return self.weight_head(s, t)
