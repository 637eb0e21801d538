"""Shared config bases, one per dataset. Experiment files under `configs/` start from one of these
and set the objective and little else. Every field is documented here, once.

A config argument (`--config=configs/checkerboard_lsd.py:demo`) selects a variant of the base:
  - "demo": the README's few-minute CPU run;
  - "smoke": seconds, for tests.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("", "demo", "smoke")


def _check_variant(variant: str | None) -> str:
  variant = variant or ""
  if variant not in VARIANTS:
    raise ValueError(f"unknown config variant {variant!r}; allowed: {[v for v in VARIANTS if v]}")
  return variant


def common() -> ml_collections.ConfigDict:
  """Fields every experiment has."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data: set by each dataset base.
  c.data = ml_collections.ConfigDict()
  c.data.name = ""

  # Interpolant I_t = alpha_t x0 + beta_t x1 with noise N(0, sigma0^2 I) (`method.md` §1).
  c.interpolant = ml_collections.ConfigDict()
  c.interpolant.name = "linear"  # linear | trigonometric
  c.interpolant.sigma0 = 1.0

  # Network answering v_{s,t}(x).
  c.model = ml_collections.ConfigDict()
  c.model.name = ""  # mlp | unet
  c.model.learn_weight = False  # learned log-weight w(s, t) (`method.md` §4)

  # Objective (`method.md` §3-4).
  c.objective = ml_collections.ConfigDict()
  c.objective.name = "lsd"  # flow_matching | lsd | esd | psd
  c.objective.stop_gradient = "teacher"  # teacher | full | none
  c.objective.diagonal_fraction = 0.75  # eta: fraction of rows on s = t, on every device
  c.objective.psd_h = "uniform"  # PSD's u = h s + (1 - h) t: uniform (PSD-U) | midpoint (PSD-M)
  c.objective.teacher = "online"  # online | ema_<decay>, e.g. ema_0.999 (a decay of train.ema_decays)
  c.objective.anneal_start = 0  # diagonal only until this step ...
  c.objective.anneal_steps = 0  # ... then the largest t - s grows linearly to 1 (0: no annealing)

  # Optimiser (optax).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "radam"  # radam | adam
  c.optim.learning_rate = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 10.0  # global-norm clipping; 0 disables it
  c.optim.warmup_steps = 0  # linear warm-up from 0
  c.optim.decay_start = 35_000  # constant, then lr0 / sqrt(step / decay_start); 0: constant

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 250_000
  c.train.batch_size = 4096  # the global batch, split over every device of every host
  c.train.ema_decays = (0.999, 0.9999)
  c.train.log_every = 100
  c.train.checkpoint_every = 5_000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0  # 0: evaluate only when asked (--mode=eval) or at the end (train_and_eval)

  c.eval = ml_collections.ConfigDict()
  c.eval.params = "ema_0.9999"  # online | ema_<decay>
  c.eval.steps = (1, 2, 4, 8, 16)  # numbers of flow-map steps
  c.eval.num_samples = 100_000
  c.eval.batch_size = 10_000

  c.sample = ml_collections.ConfigDict()
  c.sample.steps = (1, 2, 4, 8, 16)
  c.sample.num_samples = 10_000
  return c


def checkerboard(variant: str | None = None) -> ml_collections.ConfigDict:
  """The paper's checkerboard (`method.md` §5): MLP 5 x 512 GELU, RAdam 1e-3, clip 10."""
  variant = _check_variant(variant)
  c = common()
  c.data.name = "checkerboard"
  c.interpolant.sigma0 = 0.577  # the data std, as published
  c.model.name = "mlp"
  c.model.width = 512
  c.model.depth = 5
  c.train.batch_size = 100_000
  c.train.num_steps = 250_000
  c.eval.ode_steps = (16, 64, 256)  # Heun steps on b_t = v_{t,t}: the many-step baseline
  c.eval.kl_bins = 200
  if variant == "demo":
    c.train.batch_size = 4096
    c.train.num_steps = 6_000
    c.train.log_every = 250
    c.train.checkpoint_every = 2_000
    c.optim.decay_start = 3_000
    c.train.ema_decays = (0.999,)
    c.eval.params = "ema_0.999"
  elif variant == "smoke":
    c.model.width = 64
    c.model.depth = 2
    c.train.batch_size = 256
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.ema_decays = (0.9,)
    c.eval.params = "ema_0.9"
    c.eval.num_samples = 4_000
    c.eval.batch_size = 4_000
    c.eval.ode_steps = (4,)
    c.sample.num_samples = 64
  return c
