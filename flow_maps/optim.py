"""Optimiser and learning-rate schedule (`docs/method.md` §5)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("radam", "adam")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """lr0, constant until `decay_start`, then lr0 / sqrt(step / decay_start) (the published
  schedule); optionally times a linear warm-up from 0 over `warmup_steps`."""
  lr0 = config.learning_rate
  decay_start = config.decay_start
  warmup = config.warmup_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = jnp.asarray(lr0, jnp.float32)
    if decay_start > 0:
      lr = lr / jnp.sqrt(jnp.maximum(step / decay_start, 1.0))
    if warmup > 0:
      lr = lr * jnp.minimum((step + 1.0) / warmup, 1.0)
    return lr

  return schedule


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping, then RAdam or Adam on the schedule."""
  schedule = learning_rate_schedule(config)
  if config.name == "radam":
    opt = optax.radam(schedule, b1=config.b1, b2=config.b2)
  elif config.name == "adam":
    opt = optax.adam(schedule, b1=config.b1, b2=config.b2)
  else:
    raise ValueError(f"optim.name: unknown optimiser {config.name!r}; allowed: {OPTIMIZERS}")
  if config.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
  return opt
