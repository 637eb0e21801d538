"""Config validation: once, before anything compiles, with errors that name the field."""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Iterable

import ml_collections
import numpy as np

from flow_maps import data as data_lib
from flow_maps import interpolants, networks, objectives, optim, sampling, times


class ConfigError(ValueError):
  """A user's config is wrong; the message names the field and what is allowed."""


def _fail(field: str, message: str):
  raise ConfigError(f"{field}: {message}")


def _require(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      _fail(field, "missing from the config")
    node = node[part]
  return node


def _choice(config, field: str, allowed: Iterable[str]):
  value = _require(config, field)
  allowed = tuple(allowed)
  if value not in allowed:
    _fail(field, f"unknown value {value!r}; allowed: {', '.join(map(repr, allowed))}")


# What the device sees: integers become int32 and floats float32 (jax without x64), so a value
# that passes a Python check can still overflow (a batch of 2**31) or become inf (1e39) there.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _device_range(field: str, value, *, integer: bool) -> None:
  """Fails unless `value` is representable on the device: int32 for integers, a finite float32
  for floats."""
  if integer:
    if not -INT32_MAX - 1 <= value <= INT32_MAX:
      _fail(field, f"must fit in int32 (|value| < 2**31) as the device sees it, got {value!r}")
  elif abs(value) > FLOAT32_MAX:
    _fail(field, f"must be finite in float32 (|value| <= {FLOAT32_MAX:.4g}) as the device sees "
          f"it, got {value!r}")


def _number(config, field: str, *, low=None, high=None, integer=False, low_open=False):
  value = _require(config, field)
  kind = "an integer" if integer else "a number"
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      integer and not isinstance(value, int)):
    _fail(field, f"must be {kind}, got {value!r}")
  if not math.isfinite(value):
    _fail(field, f"must be finite, got {value!r}")
  _device_range(field, value, integer=integer)
  if low is not None and (value < low or (low_open and value == low)):
    _fail(field, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
  if low is not None and low_open and not integer and np.float32(value) <= low:
    _fail(field, f"must be > {low} in float32 as the device sees it, got {value!r} (it rounds "
          f"to {float(np.float32(value))!r})")
  if high is not None and value > high:
    _fail(field, f"must be <= {high}, got {value!r}")


def _positive_ints(field: str, values, *, allow_empty: bool) -> None:
  if not isinstance(values, (tuple, list)) or not (values or allow_empty) or not all(
      isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= INT32_MAX for n in values):
    kind = "a tuple of integers >= 1" + (" (may be empty)" if allow_empty else ", non-empty")
    _fail(field, f"must be {kind}, got {values!r}")


def _model(config) -> None:
  """The network's sizes: every one a positive integer (a width of 0 or a depth of -1 would
  build a network that cannot learn, or fail deep inside flax)."""
  _choice(config, "model.name", networks.NETWORKS)
  if config.model.name == "mlp":
    _number(config, "model.width", low=1, integer=True)
    _number(config, "model.depth", low=1, integer=True)
    return
  from flow_maps.networks import unet
  _choice(config, "model.preset", unet.PRESETS)
  _choice(config, "model.compute_dtype", unet.COMPUTE_DTYPES)
  _choice(config, "model.log_weight_head", unet.WEIGHT_HEADS)
  for field in ("model_channels", "num_blocks", "channels_per_head", "logvar_channels"):
    if config.model.get(field) is not None:
      _number(config, f"model.{field}", low=1, integer=True)
  for field, allow_empty in (("channel_mult", False), ("attn_resolutions", True)):
    if config.model.get(field) is not None:
      _positive_ints(f"model.{field}", config.model[field], allow_empty=allow_empty)
  if config.model.get("dropout") is not None:
    _number(config, "model.dropout", low=0.0)
    if config.model.dropout >= 1.0:
      _fail("model.dropout", f"must be < 1, got {config.model.dropout!r}")
  if config.model.get("fourier_bandwidth") is not None:
    _number(config, "model.fourier_bandwidth", low=0.0, low_open=True)


def _mixture_nd(config) -> None:
  """The d-D mixture's data and evaluation fields (`data/mixture_nd.py`)."""
  _number(config, "data.dim", low=2, integer=True)
  _number(config, "data.num_components", low=1, integer=True)
  if config.data.num_components > config.data.dim + 1:
    _fail("data.num_components", f"the means are a regular simplex, which has at most dim + 1 = "
          f"{config.data.dim + 1} vertices in {config.data.dim} dimensions, got "
          f"{config.data.num_components}")
  _number(config, "data.separation", low=0.0)
  _number(config, "data.component_std", low=0.0, low_open=True)
  _number(config, "data.means_seed", low=0, integer=True)
  _choice(config, "eval.ode_sampler", sampling.ODE_SAMPLERS)
  for field in ("lipschitz_times", "lipschitz_samples", "lipschitz_iterations"):
    _number(config, f"eval.{field}", low=1, integer=True)
  if not isinstance(_require(config, "eval.lipschitz_model"), bool):
    _fail("eval.lipschitz_model", f"must be True or False, got {config.eval.lipschitz_model!r}")


def _step_counts(field: str, steps, *, allow_empty: bool) -> None:
  """A tuple of numbers of sampling steps, each an int >= 1."""
  if not isinstance(steps, (tuple, list)) or not (steps or allow_empty) or not all(
      isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in steps):
    kind = "a tuple of step counts >= 1 (may be empty)" if allow_empty else \
        "a non-empty tuple of step counts >= 1"
    _fail(field, f"must be {kind}, got {steps!r}")


def _scales(field: str, values) -> None:
  if not isinstance(values, (tuple, list)) or not values or not all(
      isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
      for w in values):
    _fail(field, f"must be a non-empty tuple of guidance scales, got {values!r}")


def _conditioning(config, num_devices: int, objective: objectives.Objective) -> None:
  """Labels, label dropout and learned guidance (`docs/method.md` §9). Any sampler of
  `eval.sampler` serves a conditional map (the consistency sampler of single-time maps too);
  what a single-time map cannot do is supply a velocity b = v_(t,t): it never trains its
  diagonal."""
  layout = objective.layout
  conditional = _require(config, "data.conditional")
  if not isinstance(conditional, bool):
    _fail("data.conditional", f"must be True or False, got {conditional!r}")
  if conditional and config.data.name not in data_lib.LABELLED:
    _fail("data.conditional", f"{config.data.name!r} carries no labels in this pipeline; "
          f"labelled data sets: {', '.join(data_lib.LABELLED)}")
  _number(config, "data.label_dropout", low=0.0)
  if config.data.label_dropout >= 1.0:
    _fail("data.label_dropout", f"must be < 1, got {config.data.label_dropout!r}")
  learned = _require(config, "guidance.learned")
  if not isinstance(learned, bool):
    _fail("guidance.learned", f"must be True or False, got {learned!r}")
  _number(config, "guidance.w_min")
  _number(config, "guidance.w_max", low=config.guidance.w_min)
  _number(config, "guidance.fraction", low=0.0, high=1.0)
  if learned:
    if not conditional:
      _fail("guidance.learned", "guidance needs labels: set data.conditional=True")
    if config.objective.velocity not in ("self", "pretrained"):
      _fail("guidance.learned", "the guided velocity is built from the network's own diagonal "
            "(objective.velocity='self') or a pretrained teacher's ('pretrained'), got "
            f"{config.objective.velocity!r}")
    if not 0.0 < config.data.label_dropout:
      _fail("data.label_dropout", "guidance needs the unconditional model: label_dropout > 0")
  if learned and config.objective.velocity == "pretrained":
    # Distillation guides the teacher's velocity on every diagonal row: no share to choose.
    from flow_maps import config_defaults
    if config.guidance.fraction != config_defaults.common().guidance.fraction:
      _fail("guidance.fraction", "distillation regresses every diagonal row on the teacher's "
            "guided velocity; the fraction of guided rows is self-distillation's (leave it at "
            f"{config_defaults.common().guidance.fraction}), got {config.guidance.fraction!r}")
  elif learned:
    if not 0.0 < config.guidance.fraction < 1.0:
      _fail("guidance.fraction", "the diagonal needs guided rows and flow-matching rows: it must "
            f"lie in (0, 1), got {config.guidance.fraction!r}")
    try:
      period = times.diagonal_layout(config.guidance.fraction).period
    except ValueError as e:
      _fail("guidance.fraction", str(e))
    per_device_diagonal = layout.counts(config.train.batch_size // num_devices)[0]
    if not per_device_diagonal:
      _fail("guidance.learned", "self-distilled guidance is learned on the diagonal rows, from "
            "the network's own diagonal, and this objective has none (objective.diagonal_fraction="
            f"{config.objective.diagonal_fraction}, times={config.objective.times!r}); a "
            "single-time map learns guidance by distillation (objective.velocity='pretrained')")
    if per_device_diagonal % period:
      _fail("guidance.fraction", f"{config.guidance.fraction} of the {per_device_diagonal} "
            f"diagonal rows per device is not whole: they must be a multiple of {period}")
  _number(config, "guidance.fixed_omega", low=0.0)
  _number(config, "guidance.fixed_kappa", low=0.0)
  fixed = config.guidance.fixed_omega or config.guidance.fixed_kappa
  map_scale = 1.0
  if fixed:
    if not config.guidance.fixed_omega:
      _fail("guidance.fixed_kappa", "needs guidance.fixed_omega > 0")
    if config.guidance.fixed_kappa >= 1.0:
      _fail("guidance.fixed_kappa", f"must be < 1, got {config.guidance.fixed_kappa!r}")
    if not conditional:
      _fail("guidance.fixed_omega", "guidance needs labels: set data.conditional=True")
    if learned:
      _fail("guidance.fixed_omega", "a fixed scale and guidance.learned exclude each other")
    if config.objective.velocity != "conditional" or config.objective.residual not in (
        "eulerian", "diagonal"):
      _fail("guidance.fixed_omega", "MeanFlow's fixed guidance changes the conditional-velocity "
            "target: it needs objective.velocity='conditional' with the eulerian or diagonal "
            f"residual, got {config.objective.velocity!r} with {config.objective.residual!r}")
    if objective.times.single_time:
      _fail("guidance.fixed_omega", "MeanFlow's fixed guidance takes b(.|c) and b(.|null) from "
            "the network's own diagonal v_(t,t), which a single-time map (times="
            f"{config.objective.times!r}, trained to t = 1 only) never trains")
    if not 0.0 < config.data.label_dropout:
      _fail("data.label_dropout", "guidance needs the unconditional model: label_dropout > 0")
    map_scale = config.guidance.fixed_omega / (1.0 - config.guidance.fixed_kappa)
  for section in ("eval", "sample"):
    _number(config, f"{section}.label", low=-1, integer=True)
    _scales(f"{section}.guidance", _require(config, f"{section}.guidance"))
    label = config[section].label
    if label >= 0 or tuple(config[section].guidance) != (map_scale,):
      if not conditional:
        _fail(f"{section}.label" if label >= 0 else f"{section}.guidance",
              "needs a conditional run (data.conditional=True)")
      classes = data_lib.num_classes(config)
      if label >= classes:
        _fail(f"{section}.label", f"the data set has classes 0 to {classes - 1}, got {label}")
      if section == "eval" and label >= 0 and not data_lib.is_toy(config):
        _fail("eval.label", "image FID is against the whole training split, so its labels are "
              f"drawn uniformly over the classes: leave it at -1, got {label} (sample.label "
              "picks a class for --mode=sample)")
    if section == "sample" and conditional and not learned and tuple(
        config.sample.guidance) != (map_scale,):
      _fail("sample.guidance", f"without guidance.learned the map learns w = {map_scale:g} "
            f"only (the guided ODE is in --mode=eval), got {tuple(config.sample.guidance)}")
    if learned:
      outside = [w for w in config[section].guidance
                 if not config.guidance.w_min <= w <= config.guidance.w_max]
      if outside:
        _fail(f"{section}.guidance", f"{outside} lie outside the trained range "
              f"[{config.guidance.w_min}, {config.guidance.w_max}] (guidance.w_min, w_max)")


def ema_name(decay: float) -> str:
  return f"ema_{decay:g}"


def params_choices(config) -> tuple[str, ...]:
  """Names of the parameter sets a run keeps: 'online' and one 'ema_<decay>' per EMA decay."""
  return ("online",) + tuple(ema_name(d) for d in config.train.ema_decays)


# Sections every field of which `config_defaults.common()` defines: a field there that common()
# lacks is a misspelling or a field since renamed (an `objective.name` set in code would be
# ignored and train another objective), so it is refused. The other sections also hold fields
# of their data set's or network's base config.
CLOSED_SECTIONS = ("interpolant", "objective", "guidance", "optim")


def _no_unknown_fields(config) -> None:
  import difflib
  from flow_maps import config_defaults
  known = config_defaults.common()
  for section in CLOSED_SECTIONS:
    if section not in config:
      continue
    extra = sorted(set(config[section].keys()) - set(known[section].keys()))
    if extra:
      near = difflib.get_close_matches(extra[0], list(known[section].keys()), n=3, cutoff=0.5)
      hint = f"nearest: {', '.join(f'{section}.{n}' for n in near)}" if near else \
          f"fields of {section}: {', '.join(sorted(known[section].keys()))}"
      _fail(f"{section}.{extra[0]}", f"no such field (misspelt, or renamed since); {hint}")


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ConfigError for the first problem found."""
  _no_unknown_fields(config)
  _number(config, "seed", integer=True)
  _choice(config, "data.name", data_lib.DATASETS)
  if config.data.name == "mixture_nd":
    _mixture_nd(config)
  _number(config, "data.workers", low=0, integer=True)
  if config.data.workers and data_lib.is_toy(config):
    _fail("data.workers", f"{config.data.name!r} is drawn inside the train step; worker "
          f"processes read images only, got {config.data.workers!r}")
  if config.data.workers and importlib.util.find_spec("grain") is None:
    _fail("data.workers", "worker processes need grain (`pip install grain`); set 0 to read "
          "in this process")
  _choice(config, "interpolant.name", interpolants.INTERPOLANTS)
  _number(config, "interpolant.sigma0", low=0, low_open=True)
  _model(config)

  _choice(config, "objective.residual", objectives.RESIDUALS)
  _choice(config, "objective.velocity", objectives.VELOCITIES)
  _choice(config, "objective.stop_gradient", objectives.STOP_GRADIENTS)
  _choice(config, "objective.times", times.TIME_DISTRIBUTIONS)
  _choice(config, "objective.weighting", objectives.WEIGHTINGS)
  _choice(config, "objective.distance", objectives.DISTANCES)
  _choice(config, "objective.dropout", objectives.DROPOUTS)
  _choice(config, "objective.psd_h", ("uniform", "midpoint"))
  _number(config, "objective.diagonal_fraction", low=0.0, high=1.0)
  for field in ("logit_normal_std", "noise_std", "sigma_min", "rho", "adaptive_c"):
    _number(config, f"objective.{field}", low=0, low_open=True)
  for field in ("logit_normal_mean", "noise_mean"):
    _number(config, f"objective.{field}")
  _number(config, "objective.sigma_max", low=config.objective.sigma_min, low_open=True)
  _number(config, "objective.adaptive_p", low=0)
  _number(config, "objective.dyadic_levels", low=1, high=30, integer=True)
  _number(config, "objective.ict_s0", low=1, integer=True)
  _number(config, "objective.ict_s1", low=config.objective.ict_s0, high=100_000, integer=True)
  _number(config, "objective.tangent_normalization", low=0.0)
  _number(config, "objective.tangent_warmup_steps", low=0, integer=True)
  _number(config, "objective.segment_fraction", low=0.0, high=1.0)
  _positive_ints("objective.segment_steps", config.objective.segment_steps, allow_empty=False)
  if config.objective.segment_fraction and config.objective.times not in times.ANNEALED:
    _fail("objective.segment_fraction", f"sampler segments mix into times in {times.ANNEALED} "
          f"only, got times={config.objective.times!r}")
  if config.objective.pseudo_huber_c is not None:
    _number(config, "objective.pseudo_huber_c", low=0, low_open=True)
  try:  # the objective checks its own combinations, with messages that name the field
    objective = objectives.from_config(config.objective)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  layout = objective.layout
  _number(config, "objective.anneal_start", low=0, integer=True)
  _number(config, "objective.anneal_steps", low=0, integer=True)
  if config.objective.anneal_steps and config.objective.times not in times.ANNEALED:
    _fail("objective.anneal_steps", f"gap annealing applies to times in {times.ANNEALED} only, "
          f"got times={config.objective.times!r}")
  pretrained = _require(config, "objective.pretrained")
  if not isinstance(pretrained, str):
    _fail("objective.pretrained", f"must be a workdir path (str), got {pretrained!r}")
  if (config.objective.velocity == "pretrained") != bool(pretrained):
    _fail("objective.pretrained",
          "velocity='pretrained' needs a finished run's workdir here "
          "(--config.objective.pretrained=DIR)" if not pretrained else
          f"set to {pretrained!r} but objective.velocity is {config.objective.velocity!r}, "
          "which does not use it")
  _choice(config, "eval.sampler", sampling.SAMPLERS)
  if objective.times.single_time and config.eval.sampler != "consistency":
    _fail("eval.sampler", f"times={config.objective.times!r} trains the single-time map X_(s,1) "
          "only, so it samples with 'consistency', got " + repr(config.eval.sampler))

  _choice(config, "optim.name", optim.OPTIMIZERS)
  _number(config, "optim.learning_rate", low=0, low_open=True)
  _number(config, "optim.b1", low=0.0, high=1.0)
  _number(config, "optim.b2", low=0.0, high=1.0)
  _number(config, "optim.clip_norm", low=0.0)
  _number(config, "optim.warmup_steps", low=0, integer=True)
  _number(config, "optim.decay_start", low=0, integer=True)
  _choice(config, "optim.schedule", optim.SCHEDULES)
  _number(config, "optim.decay_end", low=0, integer=True)
  if config.optim.schedule != "rsqrt":
    if config.optim.decay_end <= config.optim.decay_start:
      _fail("optim.decay_end", f"the {config.optim.schedule} schedule reaches zero at decay_end, "
            f"which must come after optim.decay_start={config.optim.decay_start}, got "
            f"{config.optim.decay_end}")
    if config.train.num_steps > config.optim.decay_end:
      _fail("optim.decay_end", f"the {config.optim.schedule} schedule is zero from step "
            f"{config.optim.decay_end} on, but train.num_steps={config.train.num_steps} trains "
            "past it: raise decay_end (a change of meaning) or lower num_steps")

  _number(config, "train.num_steps", low=0, integer=True)
  _number(config, "train.batch_size", low=1, integer=True)
  for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
    _number(config, f"train.{field}", low=1, integer=True)
  _number(config, "train.eval_every", low=0, integer=True)
  _choice(config, "train.eval_schedule", ("every", "log"))
  _number(config, "train.eval_points", low=1, integer=True)
  _number(config, "train.eval_num_samples", low=0, integer=True)
  project = _require(config, "train.wandb_project")
  if not isinstance(project, str):
    _fail("train.wandb_project", f"must be a project name or '' (off), got {project!r}")
  if project and importlib.util.find_spec("wandb") is None:
    _fail("train.wandb_project", f"logging to W&B project {project!r} needs the wandb package, "
          "which is not installed (pip install wandb)")
  if config.train.eval_schedule == "log" and config.train.eval_every:
    _fail("train.eval_every", "is the step of eval_schedule='every'; with eval_schedule='log' "
          f"the evaluation steps are set by train.eval_points, got eval_every="
          f"{config.train.eval_every}")
  _number(config, "train.profile_start", low=0, integer=True)
  _number(config, "train.profile_steps", low=0, integer=True)
  if config.train.get("xla_optimization_level") is not None:
    _number(config, "train.xla_optimization_level", low=0, integer=True)
  decays = _require(config, "train.ema_decays")
  if not isinstance(decays, (tuple, list)):
    _fail("train.ema_decays", f"must be a tuple of decays in (0, 1), got {decays!r}")
  for d in decays:
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d < 1.0:
      _fail("train.ema_decays", f"each decay must lie in (0, 1), got {d!r}")
    if not 0.0 < np.float32(d) < 1.0:  # 1 - 1e-9 is 1.0 on the device: an EMA that never moves
      _fail("train.ema_decays", f"each decay must lie in (0, 1) in float32 as the device sees "
            f"it, got {d!r} (it rounds to {float(np.float32(d))!r})")
  if len(set(ema_name(d) for d in decays)) != len(decays):
    _fail("train.ema_decays", f"decays must be distinct, got {tuple(decays)}")

  _choice(config, "objective.teacher", params_choices(config))
  _choice(config, "eval.params", params_choices(config))

  batch = config.train.batch_size
  if batch % num_devices:
    _fail("train.batch_size", f"the global batch {batch} is not divisible by the {num_devices} "
          "devices")
  per_device = batch // num_devices
  if per_device % layout.period:
    _fail("train.batch_size",
          f"the per-device batch {per_device} ({batch} over {num_devices} devices) must be a "
          f"multiple of {layout.period} so that the diagonal fraction "
          f"{config.objective.diagonal_fraction} holds on every device")
  for field in ("eval.sampling_steps", "sample.sampling_steps"):
    _step_counts(field, _require(config, field), allow_empty=False)
  _step_counts("eval.ode_steps", config.eval.get("ode_steps", ()), allow_empty=True)
  _number(config, "eval.num_samples", low=1, integer=True)
  which = _require(config, "eval.checkpoint")
  if not isinstance(which, str) or not (which in ("latest", "all") or which.isdigit()):
    _fail("eval.checkpoint", f"must be 'latest', 'all' or a checkpoint's step, got {which!r}")
  _number(config, "eval.batch_size", low=1, integer=True)
  _number(config, "sample.num_samples", low=1, integer=True)
  if "kl_bins" in config.eval:
    _number(config, "eval.kl_bins", low=1, integer=True)
  _conditioning(config, num_devices, objective)


def check_eval_files(config) -> None:
  """The files an evaluation of `config` reads that a config names must exist (image FID's
  `eval.fid_stats`): checked before training, so that a long run does not end on one."""
  path = config.eval.get("fid_stats")
  if path is not None and not os.path.isfile(path):
    _fail("eval.fid_stats", f"no file {path}; compute it with python "
          f"experiments/fid_reference_stats.py --config=<this config> --out={path}, or leave "
          "eval.fid_stats unset to compute the statistics into the workdir")
