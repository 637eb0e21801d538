"""The published 2-D network: an MLP on [s, t, x / sigma0] (`docs/method.md` §5)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class LogWeight(nn.Module):
  """The learned log-weight w(s, t) of `docs/method.md` §4: a small MLP on the two times."""

  width: int = 128

  @nn.compact
  def __call__(self, s: jax.Array, t: jax.Array) -> jax.Array:
    h = jnp.stack([s, t], axis=-1)
    h = nn.gelu(nn.Dense(self.width)(h))
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[..., 0]


class MLP(nn.Module):
  """v_{s,t}(x) = sigma0 * MLP([s, t, x / sigma0]): `depth` hidden layers of `width`, GELU."""

  out_dim: int = 2
  width: int = 512
  depth: int = 5
  sigma0: float = 1.0
  learn_weight: bool = False

  def setup(self):
    self.hidden = [nn.Dense(self.width) for _ in range(self.depth)]
    self.out = nn.Dense(self.out_dim)
    if self.learn_weight:
      self.weight_head = LogWeight()

  def __call__(self, s: jax.Array, t: jax.Array, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout in the 2-D network
    flat = x.reshape((x.shape[0], -1))
    h = jnp.concatenate([s[:, None], t[:, None], flat / self.sigma0], axis=-1)
    for layer in self.hidden:
      h = nn.gelu(layer(h))
    return (self.sigma0 * self.out(h)).reshape(x.shape)

  def log_weight(self, s: jax.Array, t: jax.Array) -> jax.Array:
    return self.weight_head(s, t)
