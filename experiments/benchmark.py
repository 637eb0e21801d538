"""Cost of the objectives: the compiled train step of each, relative to flow matching.

For one network and batch, in one process:
  - the time of one train step (the real `train.make_train_step`) for flow matching (every row on
    the diagonal) and for LSD, ESD, PSD-M and PSD-U at diagonal fraction 0.75: warm-up excluded,
    variants interleaved round by round, medians of several timed runs, each ratio the median of
    the per-round ratios to the flow-matching step of the same round;
  - the same step with the losses written the straightforward way (per-sample functions of
    scalar s, t and one state x, `vmap`-ed over the batch), the reference our batched
    implementation must not be slower than;
  - compile time, XLA's cost analysis (FLOPs, and network passes per off-diagonal row from the
    FLOPs of one forward pass), the number of matmuls in the optimised HLO, and memory;
  - sampling throughput of the N-step flow map against the Heun ODE sampler on b_t = v_{t,t}.

FLOPs and HLO counts do not depend on the machine's load; timings do (the load average is
recorded with them). Prints a table and writes JSON.

  python experiments/benchmark.py                                  # 2-D MLP 512 x 5, batch 4096
  python experiments/benchmark.py --model=unet                     # the digits UNet, batch 128
  python experiments/benchmark.py --batch=1024 --repeats=3 --out=/tmp/b.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from flow_maps import config_defaults  # noqa: E402
from flow_maps import flow_map as fm  # noqa: E402
from flow_maps import objectives, pretrained, sampling, times, train  # noqa: E402

sg = jax.lax.stop_gradient

# The objectives compared: every named preset (`config_defaults.PRESETS`), each as published,
# and guidance learned into LSD's map (`docs/method.md` §9; 2-D data: labels of the checkerboard).
GUIDED = {"lsd_guided": ("lsd", {"data.conditional": True, "guidance.learned": True})}
VARIANTS = {**config_defaults.PRESETS, **GUIDED}
# The per-sample vmap reference is written for the paper's four self-distillation objectives.
VMAP_VARIANTS = ("flow_matching", "lsd", "esd", "psd_m", "psd_u")
BASELINE = "flow_matching"
DEFAULT_CONFIGS = {"mlp": "configs/checkerboard_lsd.py", "unet": "configs/digits_lsd.py"}


# --------------------------------------------------------------------------- the vmap reference


def vmap_loss(model: fm.FlowMapModel, params: Any, x1: jax.Array, key: jax.Array, *,
              objective: objectives.Objective, interpolant, teacher_params: Any = None,
              pretrained: Any = None, gap: jax.Array = 1.0, step: Any = 0, train: bool = True):
  """The loss of `objectives.loss`, written per sample and `vmap`-ed: the reference.

  Same signature, same random draws (noise, times, rows) and the same value; each residual is a
  function of scalar s, t (and h) and one state x, the network called on a batch of one.
  Published stop-gradient placements of `VMAP_VARIANTS` only; dropout draws one mask per sample.
  """
  del pretrained, step  # the paper's four objectives use neither
  key_noise, key_diag, key_off, key_dropout = jax.random.split(key, 4)
  batch = x1.shape[0]
  x0 = interpolant.noise(key_noise, x1.shape, x1.dtype)
  teacher_params = sg(params if teacher_params is None else teacher_params)

  def net(p, dropout_key=None):
    def v(s, t, x):
      kwargs = dict(train=True, rngs={"dropout": dropout_key}) if dropout_key is not None else {}
      return model.module.apply({"params": p}, s[None], t[None], x[None], **kwargs)[0]
    return v

  def X(v, s, t, x):
    return x + (t - s) * v(s, t, x)

  def sq(y):
    return jnp.sum(jnp.square(y))

  def diagonal(t, x0, x1, k):
    v = net(params, k if train else None)
    It = interpolant.alpha(t) * x0 + interpolant.beta(t) * x1
    dI = interpolant.dalpha(t) * x0 + interpolant.dbeta(t) * x1
    return sq(v(t, t, It) - dI)

  def lsd(s, t, h, x, k):
    del h
    v, vt = net(params, k if train else None), net(teacher_params)
    Xst, dX_dt = jax.jvp(lambda t_: X(v, s, t_, x), (t,), (jnp.ones_like(t),))
    return sq(dX_dt - sg(vt(t, t, sg(Xst))))

  def esd(s, t, h, x, k):
    del h
    v, vt = net(params, k if train else None), net(teacher_params)
    _, dX_ds = jax.jvp(lambda s_: X(v, s_, t, x), (s,), (jnp.ones_like(s),))
    b = sg(vt(s, s, x))
    _, transport = jax.jvp(lambda x_: X(v, s, t, x_), (x,), (b,))
    return sq(dX_ds + sg(transport))

  def psd(s, t, h, x, k):
    v, vt = net(params, k if train else None), net(teacher_params)
    u = h * s + (1.0 - h) * t
    v_su = vt(s, u, x)
    v_ut = vt(u, t, x + (u - s) * v_su)
    return sq(v(s, t, x) - sg((1.0 - h) * v_su + h * v_ut))

  def weighted(R, s, t):
    if objective.weighting != "learned":
      return R
    w = model.log_weight(params, s, t)
    return jnp.exp(-w) * R + w

  layout = objective.layout
  n_diag, n_off = layout.counts(batch)
  x0_d, x0_o = layout.split(x0)
  x1_d, x1_o = layout.split(x1)
  dropout_keys = jax.random.split(key_dropout, batch)
  k_d, k_o = layout.split(dropout_keys)
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  if n_diag:
    t = objective.times.diagonal(key_diag, n_diag, x1.dtype)
    R = jax.vmap(diagonal)(t, x0_d, x1_d, k_d)
    total += jnp.sum(weighted(R, t, t))
    metrics["diagonal"] = jnp.mean(R)
  if n_off:
    ts = objective.times.off_diagonal(key_off, n_off, interpolant, gap=gap, dtype=x1.dtype)
    Is = interpolant.interpolate(ts.s, x0_o, x1_o)
    residual = {"lagrangian": lsd, "eulerian": esd, "progressive": psd}[objective.residual]
    R = jax.vmap(residual)(ts.s, ts.t, ts.h, Is, k_o)
    total += jnp.sum(weighted(R, ts.s, ts.t))
    metrics[objective.residual] = jnp.mean(R)
  total = total / batch
  metrics["loss"] = total
  return total, metrics


# --------------------------------------------------------------------------- experiments


def load_config(spec: str):
  """`path.py[:variant]` -> its get_config(variant)."""
  path, _, variant = spec.partition(":")
  path = path if os.path.isabs(path) else os.path.join(ROOT, path)
  module_spec = importlib.util.spec_from_file_location("_benchmark_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def default_unet_config():
  """The digits UNet config: its file if it exists, else `config_defaults.digits()`."""
  path = os.path.join(ROOT, DEFAULT_CONFIGS["unet"])
  if os.path.exists(path):
    return load_config(path)
  from flow_maps import config_defaults
  return config_defaults.digits()


@dataclasses.dataclass
class Step:
  """One compiled train step (`train.compile_step`) and what XLA says about it."""

  label: str
  compiled: train.CompiledStep
  state: Any
  batch: Any  # a stand-in of the step's host batch (`stand_in_batch`)
  compile_seconds: float
  flops: float
  transcendentals: float
  bytes_accessed: float
  matmuls: int
  memory_mb: float

  def run(self, n: int) -> float:
    """Seconds per step over n steps, the state carried from step to step."""
    start = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.compiled.run(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / n


def count_matmuls(hlo_text: str) -> int:
  """dot and convolution instructions in optimised HLO (fusions included)."""
  return len(re.findall(r"\b(?:dot|convolution)\(", hlo_text))


def memory_mb(compiled) -> float:
  """Peak live buffers of the executable: arguments + outputs - aliased + temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes)
  return total / 2**20


def stand_in_batch(exp: train.Experiment) -> Any:
  """A host batch of the step's layout (`exp.source.abstract_batch()`), without reading data:
  images uniform in [-1, 1], labels uniform over the classes; toy data, drawn inside the step,
  has the empty batch."""
  rng = np.random.default_rng(0)

  def leaf(spec):
    if jnp.issubdtype(spec.dtype, jnp.integer):
      x = rng.integers(0, exp.conditioning.num_classes, spec.shape)
    else:
      x = rng.uniform(-1, 1, spec.shape)
    return jax.device_put(jnp.asarray(x, spec.dtype), spec.sharding)

  return jax.tree.map(leaf, exp.source.abstract_batch())


def train_step(config, loss_fn: Optional[Callable] = None):
  """The real train step of `config` (optionally with `objectives.loss` replaced by `loss_fn`:
  same step, same optimiser and EMAs, only the loss differs), not yet compiled, with its
  experiment and initial state: (exp, step, state)."""
  exp = train.build_experiment(config)
  state = train.init_state(exp)
  # Distillation presets: a frozen teacher of the same architecture (its cost, not its weights,
  # is what is measured here).
  frozen = (pretrained.Pretrained(exp.model, jax.device_get(state.params), {})
            if config.objective.velocity == "pretrained" else None)
  return exp, train.make_train_step(exp, frozen, loss_fn=loss_fn or objectives.loss), state


def lowered_flops(config) -> float:
  """XLA's FLOP count of the train step as lowered, before optimisation: no compilation (about a
  third of the CPU time of lowering and compiling an MLP step). It is not a bound of the
  compiled count but close to it: within 1.1 % of the step's FLOPs on the MLP presets, 0.12
  passes per off-diagonal row either way (LSD 7.04 lowered against 7.16 compiled, guided LSD
  10.24 against 10.13)."""
  lowered = train.lower_step(*train_step(config))
  return float(train.cost_analysis(lowered).get("flops", float("nan")))


def compile_step(label: str, config, loss_fn: Optional[Callable] = None) -> Step:
  """The real train step of `config` compiled as the training loop compiles it
  (`train.compile_step`; tracing and lowering included in its time: what a run waits for), and
  what XLA says about it."""
  exp, step, state = train_step(config, loss_fn)
  compiled = train.compile_step(exp, step, state)
  executable = compiled.executable
  cost = train.cost_analysis(executable)
  return Step(label=label, compiled=compiled, state=state, batch=stand_in_batch(exp),
              compile_seconds=compiled.seconds,
              flops=float(cost.get("flops", float("nan"))),
              transcendentals=float(cost.get("transcendentals", float("nan"))),
              bytes_accessed=float(cost.get("bytes accessed", float("nan"))),
              matmuls=count_matmuls(executable.as_text()), memory_mb=memory_mb(executable))


def forward_flops(config, batch_size: int) -> float:
  """FLOPs of one forward pass v_{s,t}(x) of the network on a batch (XLA's count)."""
  exp = train.build_experiment(config)
  params = jax.eval_shape(exp.model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1,) + exp.data_shape, jnp.float32))
  s = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
  x = jax.ShapeDtypeStruct((batch_size,) + exp.data_shape, jnp.float32)
  compiled = jax.jit(lambda p, s, x: exp.model.bind(p)(s, s, x)).lower(params, s, x).compile()
  return float(train.cost_analysis(compiled).get("flops", float("nan")))


def loss_agreement(config, batch_size: int) -> float:
  """max |ours - vmap| / |ours| of the loss at initialisation with one key: the reference
  computes the same thing."""
  config = copy.deepcopy(config)
  config.train.batch_size = batch_size
  exp = train.build_experiment(config)
  state = train.init_state(exp)
  x1, _ = exp.source.draw(jax.random.PRNGKey(1), stand_in_batch(exp))
  key = jax.random.PRNGKey(2)
  kwargs = dict(objective=exp.objective, interpolant=exp.interpolant, train=False)
  ours = jax.jit(lambda p, x: objectives.loss(exp.model, p, x, key, **kwargs)[0])(state.params, x1)
  ref = jax.jit(lambda p, x: vmap_loss(exp.model, p, x, key, **kwargs)[0])(state.params, x1)
  return float(abs(ours - ref) / abs(ours))


# --------------------------------------------------------------------------- sampling


def sampling_throughput(config, batch_size: int, map_steps, ode_steps, repeats: int) -> list:
  exp = train.build_experiment(config)
  params = train.init_state(exp).params
  x0 = sampling.noise(jax.random.PRNGKey(0), batch_size, exp.data_shape, exp.interpolant.sigma0)
  rows = []
  jobs = [("flow map", n, n, sampling.sample_flow_map) for n in map_steps] + \
         [("Heun ODE", n, 2 * n, sampling.sample_heun) for n in ode_steps]
  for name, n, evals, sampler in jobs:
    fn = jax.jit(lambda p, x, n=n, sampler=sampler: sampler(exp.model.bind(p), x, n))
    jax.block_until_ready(fn(params, x0))  # compile and warm up
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(params, x0))
      seconds.append(time.perf_counter() - start)
    t = statistics.median(seconds)
    rows.append(dict(sampler=name, steps=n, network_evals=evals, batch=batch_size,
                     ms_per_batch=1e3 * t, samples_per_sec=batch_size / t))
  return rows


# --------------------------------------------------------------------------- the input pipeline


def stand_in_example(name: str) -> Callable[[str, int, Any], dict]:
  """Random images of the dataset's real stored shape, for `stand_in.write_stand_in_tfds`:
  CIFAR-10 32x32x3 (PNG), CelebA 218x178x3 (JPEG; smooth random fields, so the JPEGs have a
  photo's size rather than noise's)."""
  def cifar10(split, i, features):
    del features
    rng = np.random.RandomState([len(split), i])
    return {"id": f"{split}{i}", "image": rng.randint(0, 256, (32, 32, 3)).astype(np.uint8),
            "label": i % 10}

  def celeb_a(split, i, features):
    rng = np.random.RandomState([len(split), i])
    coarse = rng.uniform(0, 255, (28, 23, 3))
    image = np.kron(coarse, np.ones((8, 8, 1)))[:218, :178].round().astype(np.uint8)
    return {"image": image, "landmarks": {k: 0 for k in features["landmarks"].keys()},
            "attributes": {k: False for k in features["attributes"].keys()},
            "identity": {"Identity_No": i}}

  return {"cifar10": cifar10, "celeb_a": celeb_a}[name]


def input_throughput(dataset, batch: int, workers: int, batches: int) -> dict:
  """Host images/s of `dataset.batches` with `workers` (0: in this process, 2 threads): the
  first batch's wait (start-up, worker spawn included) separately, then `batches` batches."""
  start = time.perf_counter()
  stream = dataset.batches(0, batch, workers=workers)
  try:
    next(stream)
    first = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(stream)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  finally:
    stream.close()
  # CPU time of this process (its threads included, the workers' not): with workers = 0 it is
  # the reading's whole cost, and depends far less on the machine's load than the wall time.
  return dict(workers=workers, batch=batch, batches=batches, first_batch_s=first,
              ms_per_batch=1e3 * seconds / batches, images_per_sec=batch * batches / seconds,
              main_cpu_ms_per_image=1e3 * cpu / (batch * batches))


def input_benchmark(args) -> dict:
  """images/s of CIFAR-10 and CelebA-64 preprocessing per worker count, on prepared tfds data
  (`--data-dir`) or stand-ins of the real shapes written to a temporary directory."""
  import tempfile
  from flow_maps.data import images, stand_in

  names = {"cifar10": "cifar10", "celeba64": "celeb_a"}
  tmp = None
  data_dir = args.data_dir
  if data_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="input_bench_")
    data_dir = tmp.name
    for name in args.datasets.split(","):
      tfds_name = names[name]
      start = time.perf_counter()
      stand_in.write_stand_in_tfds(data_dir, tfds_name, {"train": args.stand_in_examples},
                                   stand_in_example(tfds_name))
      print(f"wrote a stand-in {tfds_name} of {args.stand_in_examples} examples in "
            f"{time.perf_counter() - start:.0f} s", flush=True)
  rows = []
  try:
    for name in args.datasets.split(","):
      dataset = images.get_image_dataset(name, data_dir=data_dir, seed=0)
      for workers in (int(w) for w in args.workers.split(",")):
        row = dict(dataset=name, examples=len(dataset),
                   **input_throughput(dataset, args.input_batch, workers, args.input_batches))
        rows.append(row)
        print(f"{name} workers={workers}: {row['images_per_sec']:.0f} images/s "
              f"(first batch after {row['first_batch_s']:.1f} s)", flush=True)
  finally:
    if tmp is not None:
      tmp.cleanup()
  step_times = [float(t) for t in args.step_times.split(",")]
  need = {t: args.published_batch / t for t in step_times}
  return dict(rows=rows, published_batch=args.published_batch, needed_images_per_sec=need,
              stand_in=args.data_dir is None, stand_in_examples=args.stand_in_examples)


def print_input_table(result: dict) -> str:
  lines = [f"host batch {result['rows'][0]['batch']}, "
           f"{'stand-in' if result['stand_in'] else 'prepared'} tfds array_record data; "
           "workers 0 = in the training process (2 threads)", "",
           "| dataset | workers | images / s | ms / batch | first batch s | "
           "CPU ms / image in the training process |", "|---|---|---|---|---|---|"]
  for r in result["rows"]:
    lines.append(f"| {r['dataset']} | {r['workers']} | {r['images_per_sec']:.0f} | "
                 f"{r['ms_per_batch']:.0f} | {r['first_batch_s']:.1f} | "
                 f"{r['main_cpu_ms_per_image']:.2f} |")
  lines += ["", f"| step time s | images / s the published batch ({result['published_batch']}) "
            "consumes |", "|---|---|"]
  for t, n in result["needed_images_per_sec"].items():
    lines.append(f"| {t:g} | {n:.0f} |")
  return "\n".join(lines)


# --------------------------------------------------------------------------- the published UNets


PRESET_CONFIGS = {"cifar10": config_defaults.cifar10, "celeba64": config_defaults.celeba64}


def peak_memory() -> tuple[float, str]:
  """The process's peak memory so far in MB and where it was read: the device's allocator
  (`peak_bytes_in_use`, GPU and TPU) where it reports one, else the host's peak resident set
  (XLA:CPU keeps device buffers in host memory)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, f"device ({jax.devices()[0].platform})"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host RSS"


def unet_preset_benchmark(args) -> dict:
  """The train step of each objective at a published UNet size (`--preset`), in each compute
  dtype, one configuration at a time (compile, warm up, time, free: published-size states do
  not all fit at once on one accelerator)."""
  base = PRESET_CONFIGS[args.preset]()
  if args.tiny:  # the tiny architecture at the preset's image shape: for tests on CPU
    base.model.preset = "tiny"
  if args.xla_opt_level is not None:
    base.train.xla_optimization_level = args.xla_opt_level
  batch = args.batch or base.train.batch_size
  names = [n for n in args.objectives.split(",") if n] if args.objectives_given else \
      list(VMAP_VARIANTS)
  rows = []
  for dtype in args.dtypes.split(","):
    for name in names:
      config = variant_config(base, name, batch, None, None)
      config.model.compute_dtype = dtype
      step = compile_step(f"{name}/{dtype}", config)
      step.run(args.warmup)
      seconds = [step.run(args.steps_per_run) for _ in range(args.repeats)]
      t = statistics.median(seconds)
      memory, source = peak_memory()
      rows.append(dict(objective=name, dtype=dtype, batch=batch, ms=1e3 * t,
                       runs_ms=[1e3 * x for x in seconds], images_per_sec=batch / t,
                       compile_s=step.compile_seconds, gflop=step.flops / 1e9,
                       tflop_per_sec=step.flops / t / 1e12, executable_mb=step.memory_mb,
                       peak_mb=memory, peak_source=source))
      print(f"{name} {dtype}: {1e3 * t:.0f} ms/step, {batch / t:.3g} images/s, compiled in "
            f"{step.compile_seconds:.0f} s, {step.flops / 1e9:.4g} GFLOP/step, "
            f"{step.flops / t / 1e12:.3g} TFLOP/s, executable {step.memory_mb:.0f} MB, peak "
            f"{memory:.0f} MB ({source})", flush=True)
      del step
  arch = "tiny" if args.tiny else args.preset
  return dict(rows=rows, preset=args.preset, architecture=arch, batch=batch,
              parameters=count_unet_parameters(base))


def count_unet_parameters(config) -> int:
  from flow_maps.networks import unet
  exp = train.build_experiment(config)
  return unet.count_parameters(exp.model.module)


def print_unet_table(result: dict) -> str:
  lines = [f"UNet {result['architecture']} ({result['parameters'] / 1e6:.1f} M parameters) on "
           f"{result['preset']} images, batch {result['batch']}, {jax.devices()[0].platform}",
           "", "| objective | dtype | step ms | images / s | compile s | GFLOP / step | "
           "TFLOP/s | executable MB | peak MB (source) |", "|---|---|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    lines.append(f"| {r['objective']} | {r['dtype']} | {r['ms']:.0f} | "
                 f"{r['images_per_sec']:.3g} | {r['compile_s']:.0f} | {r['gflop']:.4g} | "
                 f"{r['tflop_per_sec']:.3g} | {r['executable_mb']:.0f} | "
                 f"{r['peak_mb']:.0f} ({r['peak_source']}) |")
  return "\n".join(lines)


# --------------------------------------------------------------------------- main


def variant_config(base, preset: str, batch: Optional[int], width: Optional[int],
                   depth: Optional[int], **objective_overrides):
  preset, changes = GUIDED.get(preset, (preset, {}))
  c = config_defaults.with_preset(copy.deepcopy(base), preset)
  for field, value in changes.items():
    section, name = field.split(".")
    c[section][name] = value
  for k, v in objective_overrides.items():
    c.objective[k] = v
  if c.objective.velocity == "pretrained":
    c.objective.pretrained = "(a frozen copy of the student's initial network)"
  if batch:
    c.train.batch_size = batch
  if c.model.name == "mlp":
    if width:
      c.model.width = width
    if depth:
      c.model.depth = depth
  return c


def time_steps(steps: dict[str, Step], repeats: int, per_run: int, warmup: int) -> dict:
  """Interleaved timing: every round runs every step `per_run` times, in a rotated order."""
  for step in steps.values():
    step.run(warmup)
  labels = list(steps)
  rounds: dict[str, list[float]] = {k: [] for k in labels}
  for r in range(repeats):
    order = labels[r % len(labels):] + labels[:r % len(labels)]
    for k in order:
      rounds[k].append(steps[k].run(per_run))
  return rounds


def _median_ms(seconds: list[float]) -> Optional[float]:
  return 1e3 * statistics.median(seconds) if seconds else None


def _median_ratio(seconds: list[float], baseline: list[float]) -> Optional[float]:
  """The median over rounds of the per-round ratio (rounds are interleaved: same conditions)."""
  if not seconds:
    return None
  return float(np.median(np.asarray(seconds) / np.asarray(baseline)))


def _fmt(x, spec):
  return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def print_tables(result: dict) -> str:
  lines = []
  s = result["settings"]
  lines.append(f"network {s['network']}, batch {s['batch']}, diagonal fraction 0.75 "
               f"(flow matching 1.0); {s['repeats']} interleaved rounds of {s['steps_per_run']} "
               f"steps, medians; load average {result['machine']['load_before']} -> "
               f"{result['machine']['load_after']}")
  lines.append("")
  lines.append("| objective | step ms | × FM | vmap ms | vmap × FM | ours / vmap | compile s | "
               "GFLOP | FLOP × FM | GFLOP/s | passes / off-diag row | matmuls | memory MB |")
  lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for k, r in result["train_step"].items():
    lines.append(
        f"| {k} | {_fmt(r['ms'], '.1f')} | {_fmt(r['ratio'], '.3f')} | "
        f"{_fmt(r.get('vmap_ms'), '.1f')} | {_fmt(r.get('vmap_ratio'), '.3f')} | "
        f"{_fmt(r.get('ours_over_vmap'), '.3f')} | {_fmt(r['compile_s'], '.1f')} | "
        f"{_fmt(r['gflop'], '.2f')} | {_fmt(r['flop_ratio'], '.3f')} | "
        f"{_fmt(r['gflop'] / (r['ms'] / 1e3) if r['ms'] else None, '.1f')} | "
        f"{_fmt(r['passes_per_off_diagonal_row'], '.2f')} | {r['matmuls']} | "
        f"{_fmt(r['memory_mb'], '.0f')} |")
  if result.get("sampling"):
    lines += ["", "| sampler | steps | network evals | ms / batch | samples / s |",
              "|---|---|---|---|---|"]
    for r in result["sampling"]:
      lines.append(f"| {r['sampler']} | {r['steps']} | {r['network_evals']} | "
                   f"{r['ms_per_batch']:.1f} | {r['samples_per_sec']:.0f} |")
  lines += ["", f"peak resident memory of the process: {result['maxrss_mb']:.0f} MB"]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", choices=("mlp", "unet"), default="mlp")
  p.add_argument("--config", default=None, help="config file[:variant] (default: per --model)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: 4096 for the "
                 "MLP, the config's batch for the UNet)")
  p.add_argument("--width", type=int, default=None, help="MLP width (default 512)")
  p.add_argument("--depth", type=int, default=None, help="MLP hidden layers (default 5)")
  p.add_argument("--repeats", type=int, default=7, help="timed rounds")
  p.add_argument("--steps-per-run", type=int, default=3, help="steps per timed run")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
  p.add_argument("--objectives", default=",".join(VARIANTS),
                 help=f"comma-separated subset of {','.join(VARIANTS)}")
  p.add_argument("--no-vmap", action="store_true", help="skip the per-sample vmap reference")
  p.add_argument("--no-sampling", action="store_true", help="skip sampling throughput")
  p.add_argument("--no-timing", action="store_true",
                 help="compile and analyse only (FLOPs, matmuls, memory): nothing load-dependent")
  p.add_argument("--sample-batch", type=int, default=None, help="default: the train batch")
  p.add_argument("--map-steps", default="1,2,4,8,16")
  p.add_argument("--ode-steps", default="8,16", help="Heun steps (2 network evaluations each)")
  p.add_argument("--out", default=None, help="JSON output (default runs/benchmark_<model>.json)")
  p.add_argument("--dump-hlo", default=None, metavar="DIR",
                 help="write each step's optimised HLO to DIR/<objective>.txt")
  g = p.add_argument_group("the published UNets (--model=unet --preset=...)")
  g.add_argument("--preset", choices=sorted(PRESET_CONFIGS), default=None,
                 help="the published size: each objective (default the paper's five) in each "
                 "--dtypes, one at a time")
  g.add_argument("--dtypes", default="float32,bfloat16", help="model.compute_dtype values")
  g.add_argument("--tiny", action="store_true",
                 help="the tiny architecture at the preset's image shape (tests)")
  g.add_argument("--xla-opt-level", type=int, default=None,
                 help="train.xla_optimization_level (default the config's: XLA's own)")
  g = p.add_argument_group("the input pipeline (--input)")
  g.add_argument("--input", action="store_true",
                 help="host images/s of the image readers instead of train steps")
  g.add_argument("--datasets", default="cifar10,celeba64")
  g.add_argument("--workers", default="0,1,2", help="data.workers values")
  g.add_argument("--input-batch", type=int, default=512, help="images per batch read")
  g.add_argument("--input-batches", type=int, default=8, help="timed batches per setting")
  g.add_argument("--data-dir", default=None,
                 help="prepared tfds data (default: stand-ins of the real shapes, made here)")
  g.add_argument("--stand-in-examples", type=int, default=2048)
  g.add_argument("--published-batch", type=int, default=512)
  g.add_argument("--step-times", default="0.1,0.25,0.5",
                 help="step times (s) at which to state what the published batch consumes")
  args = p.parse_args(argv)
  args.objectives_given = any(a.startswith("--objectives") for a in (argv or sys.argv[1:]))

  load_before = [round(x, 2) for x in os.getloadavg()]
  if args.input or args.preset:
    if args.input:
      result, kind = input_benchmark(args), "input"
      text = print_input_table(result)
    else:
      if args.model != "unet":
        p.error("--preset needs --model=unet")
      result, kind = unet_preset_benchmark(args), f"unet_{args.preset}"
      text = print_unet_table(result)
    result.update(machine=dict(load_before=load_before,
                               load_after=[round(x, 2) for x in os.getloadavg()],
                               cpus=os.cpu_count(), platform=platform.platform(),
                               jax=jax.__version__, device=str(jax.devices()[0])),
                  command=" ".join([sys.argv[0]] + (argv or sys.argv[1:])), table=text)
    print(text)
    out = args.out or os.path.join(ROOT, "runs", f"benchmark_{kind}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=2, default=str)
    print(f"wrote {out}")
    return 0
  if args.config:
    base = load_config(args.config)
  elif args.model == "unet":
    base = default_unet_config()
  else:
    base = load_config(DEFAULT_CONFIGS["mlp"])
  batch = args.batch or (4096 if base.model.name == "mlp" else base.train.batch_size)
  width = args.width or (512 if base.model.name == "mlp" else None)
  depth = args.depth or (5 if base.model.name == "mlp" else None)
  names = [n for n in args.objectives.split(",") if n]
  if BASELINE not in names:
    names.insert(0, BASELINE)
  configs = {k: variant_config(base, k, batch, width, depth) for k in names}
  network = (f"MLP {width} x {depth}" if base.model.name == "mlp" else
             f"UNet {base.model.get('preset')} ({base.data.name})")
  print(f"{network}, batch {batch}, {jax.devices()[0].platform}, load average {load_before}",
        flush=True)

  steps: dict[str, Step] = {}
  for k in names:
    steps[k] = compile_step(k, configs[k])
    print(f"compiled {k}: {steps[k].compile_seconds:.1f} s, {steps[k].flops / 1e9:.2f} GFLOP",
          flush=True)
    if args.dump_hlo:
      os.makedirs(args.dump_hlo, exist_ok=True)
      with open(os.path.join(args.dump_hlo, f"{k}.txt"), "w") as f:
        f.write(steps[k].compiled.executable.as_text())
    if not args.no_vmap and k in VMAP_VARIANTS:
      steps["vmap/" + k] = compile_step("vmap/" + k, configs[k], loss_fn=vmap_loss)
      print(f"compiled vmap/{k}: {steps['vmap/' + k].compile_seconds:.1f} s", flush=True)
  fwd = forward_flops(configs[BASELINE], batch)
  agreement = {} if args.no_vmap else {k: loss_agreement(configs[k], min(batch, 1024))
                                       for k in names if k in VMAP_VARIANTS}

  rounds = ({k: [] for k in steps} if args.no_timing else
            time_steps(steps, args.repeats, args.steps_per_run, args.warmup))
  fm_flops = steps[BASELINE].flops
  table = {}
  for k in names:
    st = steps[k]
    eta = configs[k].objective.diagonal_fraction
    off = None if eta == 1.0 else (st.flops - eta * fm_flops) / ((1 - eta) * fwd)
    row = dict(ms=_median_ms(rounds[k]), ratio=_median_ratio(rounds[k], rounds[BASELINE]),
               runs_ms=[1e3 * x for x in rounds[k]], compile_s=st.compile_seconds,
               gflop=st.flops / 1e9, flop_ratio=st.flops / fm_flops,
               passes_per_row=st.flops / fwd,
               passes_per_off_diagonal_row=off, matmuls=st.matmuls, memory_mb=st.memory_mb,
               transcendentals=st.transcendentals, bytes_accessed=st.bytes_accessed)
    if "vmap/" + k in steps:
      ref = steps["vmap/" + k]
      row.update(vmap_ms=_median_ms(rounds["vmap/" + k]),
                 vmap_ratio=_median_ratio(rounds["vmap/" + k], rounds[BASELINE]),
                 ours_over_vmap=_median_ratio(rounds[k], rounds["vmap/" + k]),
                 vmap_runs_ms=[1e3 * x for x in rounds["vmap/" + k]],
                 vmap_compile_s=ref.compile_seconds, vmap_gflop=ref.flops / 1e9,
                 vmap_matmuls=ref.matmuls, vmap_memory_mb=ref.memory_mb,
                 vmap_loss_relative_difference=agreement[k])
    table[k] = row
  del steps  # free the states before sampling

  sampling = []
  if not (args.no_sampling or args.no_timing):
    sampling = sampling_throughput(configs[BASELINE], args.sample_batch or batch,
                                   [int(n) for n in args.map_steps.split(",") if n],
                                   [int(n) for n in args.ode_steps.split(",") if n],
                                   min(args.repeats, 3))

  result = dict(
      settings=dict(network=network, model=base.model.to_dict(), batch=batch,
                    repeats=args.repeats, steps_per_run=args.steps_per_run, warmup=args.warmup,
                    forward_gflop=fwd / 1e9, command=" ".join([sys.argv[0]] + (argv or sys.argv[1:]))),
      machine=dict(load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()],
                   cpus=os.cpu_count(), platform=platform.platform(), jax=jax.__version__,
                   device=str(jax.devices()[0])),
      train_step=table, sampling=sampling,
      maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  text = print_tables(result)
  print(text)
  out = args.out or os.path.join(ROOT, "runs", f"benchmark_{args.model}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(dict(result, table=text), f, indent=2, default=str)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
