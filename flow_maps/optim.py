"""Optimiser and learning-rate schedule (`docs/method.md` §5)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("radam", "adam")
# After decay_start: rsqrt (the published lr0 / sqrt(step / decay_start), never zero), or a decay
# that reaches zero at decay_end, linearly or along a half cosine (for a fixed budget).
SCHEDULES = ("rsqrt", "linear", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """lr0, constant until `decay_start`, then the `schedule`'s decay: lr0 / sqrt(step /
  decay_start) (rsqrt, the published one), or to zero at `decay_end` linearly or along a half
  cosine; optionally times a linear warm-up from 0 over `warmup_steps` (`docs/method.md` §5)."""
  lr0 = config.learning_rate
  decay_start = config.decay_start
  warmup = config.warmup_steps
  kind = config.get("schedule", "rsqrt")
  decay_end = config.get("decay_end", 0)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = jnp.asarray(lr0, jnp.float32)
    if kind == "rsqrt" and decay_start > 0:
      lr = lr / jnp.sqrt(jnp.maximum(step / decay_start, 1.0))
    elif kind in ("linear", "cosine"):
      done = jnp.clip((step - decay_start) / (decay_end - decay_start), 0.0, 1.0)
      lr = lr * (1.0 - done if kind == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * done)))
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
