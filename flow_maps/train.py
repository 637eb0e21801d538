"""Train state, the data-parallel train step, and the training loop.

Read top to bottom: the experiment (everything static a run is built from), the state, the step,
then `train`, the loop that checkpoints, logs and resumes.

One code path for one device and many: a mesh with one `data` axis over every device of every
host; the state is replicated, the batch is split along the data axis, and `jax.jit` inserts the
gradient all-reduce. The batch layout of `times.py` keeps the diagonal fraction on every device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flow_maps import checkpoints as ckpt_lib
from flow_maps import cli
from flow_maps import data as data_lib
from flow_maps import interpolants, networks, objectives, optim, times, validation
from flow_maps import pretrained as pretrained_lib
from flow_maps import workdir as workdir_lib
from flow_maps.flow_map import FlowMapModel

# XLA on CPU with several fake devices deadlocks when more than ~32 steps are queued without a
# sync; reading the metrics every SYNC_EVERY steps is that sync.
SYNC_EVERY = 16


class NonFiniteLossError(FloatingPointError):
  """The loss became non-finite; the state was not updated and nothing was checkpointed."""


# --------------------------------------------------------------------------- the experiment


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays split along their first (batch) axis over the mesh's data axis."""
  return NamedSharding(mesh, P("data"))


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything static a run is built from its config: built once, never mutated."""

  config: ml_collections.ConfigDict
  model: FlowMapModel
  project: Optional[Callable[[Any], Any]]  # applied to the parameters after every update
  host_init: Optional[Callable[[int], Any]]  # initial parameters from a seed, on the host
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  objective: objectives.Objective
  interpolant: interpolants.Interpolant
  data_shape: tuple[int, ...]
  mesh: Mesh
  source: data_lib.BatchSource  # the step's data: host batches, and x1 (and labels) in the step
  conditioning: Optional[objectives.Conditioning] = None  # labels and guidance; None: unconditional

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return data_sharding(self.mesh)

  @property
  def ema_decays(self) -> tuple[float, ...]:
    return tuple(self.config.train.ema_decays)

  def select_params(self, state: "TrainState", name: str) -> Any:
    """'online' or 'ema_<decay>' (see `validation.params_choices`)."""
    if name == "online":
      return state.params
    names = [validation.ema_name(d) for d in self.ema_decays]
    return state.ema[names.index(name)]


def make_mesh() -> Mesh:
  """One `data` axis over every device of every process, in the order `jax.make_mesh` picks
  for the platform's interconnect (a ring on TPU; `jax.devices()`' order on CPU, checked in
  `tests/test_eval_parallel.py`, one process and two). Axis type Auto: XLA propagates the shardings, as the step expects
  (`jax.make_mesh` would make the axis Explicit)."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Validates the config (raising `validation.ConfigError`) and builds the static parts."""
  mesh = make_mesh()
  validation.validate(config, num_devices=mesh.size)
  shape = data_lib.data_shape(config)
  network = networks.build_network(config, shape)
  opt_config = config.optim
  return Experiment(
      config=config,
      model=FlowMapModel(network.module),
      project=network.project,
      host_init=network.host_init,
      optimizer=optim.make_optimizer(opt_config),
      schedule=optim.learning_rate_schedule(opt_config),
      objective=objectives.from_config(config.objective, config.train.num_steps),
      interpolant=interpolants.get_interpolant(config.interpolant.name,
                                               config.interpolant.sigma0),
      data_shape=shape,
      mesh=mesh,
      source=data_lib.batch_source(config, data_sharding(mesh)),
      conditioning=objectives.conditioning_from_config(config, data_lib.num_classes(config)),
  )


# --------------------------------------------------------------------------- the state


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates done
  params: Any
  opt_state: Any
  ema: tuple  # one parameter tree per decay, in the order of config.train.ema_decays
  rng: jax.Array  # the run's base key; step k uses fold_in(rng, k)


def init_state(exp: Experiment) -> TrainState:
  """The initial state, replicated over the mesh."""
  key_init, key_run = jax.random.split(jax.random.PRNGKey(exp.config.seed))
  if exp.host_init is not None:
    params = jax.device_put(exp.host_init(exp.config.seed), exp.replicated)
  else:
    x = jnp.zeros((1,) + exp.data_shape, jnp.float32)
    params = jax.jit(lambda key: exp.model.init(key, x), out_shardings=exp.replicated)(key_init)

  def state(params, key_run):
    if exp.project is not None:
      params = exp.project(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=exp.optimizer.init(params),
                      ema=tuple(params for _ in exp.ema_decays), rng=key_run)

  return jax.jit(state, out_shardings=exp.replicated)(params, key_run)


def parameter_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# --------------------------------------------------------------------------- the step


def make_train_step(exp: Experiment, pretrained: Optional[pretrained_lib.Pretrained] = None,
                    loss_fn: Callable[..., tuple[jax.Array, dict]] = objectives.loss
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """The jitted step `(state, batch) -> (state, metrics)`.

  `batch` is what `exp.source.batches` yields (laid out as `exp.source.abstract_batch()`):
  the empty tuple for toy data, whose x1 (and labels) `exp.source.draw` samples inside the step
  from the step's data key; images x1 [B, H, W, C], or for a conditional run the pair
  (x1, labels [B] int32), sharded along the batch.
  `pretrained` is the frozen teacher of objective.velocity = 'pretrained'; its parameters are an
  argument of the compiled step, never a constant folded into it. `loss_fn` has the signature of
  `objectives.loss` (the benchmark passes its reference there).
  A step whose loss or gradient is not finite leaves the state as it was (step included); the
  loop sees the metrics and stops.
  """
  config = exp.config
  teacher = config.objective.teacher
  anneal_start = config.objective.anneal_start
  anneal_steps = config.objective.anneal_steps
  decays = exp.ema_decays

  def step_fn(state: TrainState, batch: Any, frozen: Any):
    key = jax.random.fold_in(state.rng, state.step)
    key_data, key_loss = jax.random.split(key)
    x1, labels = exp.source.draw(key_data, batch)
    conditional = {}
    if labels is not None:
      conditional = dict(labels=jax.lax.with_sharding_constraint(labels, exp.batch_sharding),
                         conditioning=exp.conditioning)
    x1 = jax.lax.with_sharding_constraint(x1, exp.batch_sharding)
    teacher_params = None if teacher == "online" else exp.select_params(state, teacher)
    gap = times.max_gap(state.step, anneal_start, anneal_steps)

    frozen_field = None if pretrained is None else pretrained.teacher(frozen)

    def batch_loss(params):
      return loss_fn(exp.model, params, x1, key_loss, objective=exp.objective,
                     interpolant=exp.interpolant, teacher_params=teacher_params,
                     pretrained=frozen_field, gap=gap, step=state.step, train=True,
                     **conditional)

    (loss, metrics), grads = jax.value_and_grad(batch_loss, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(state, grads):
      updates, opt_state = exp.optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      if exp.project is not None:
        params = exp.project(params)
      ema = tuple(jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, e_tree, params)
                  for d, e_tree in zip(decays, state.ema))
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)

    # A cond rather than a select over the whole state: a select keeps the old state alive to
    # the end, and XLA then copies every donated buffer (36 copies of params and Adam moments,
    # 12 MB, at the 512 x 5 MLP); under the cond the donated state is updated in place.
    new = jax.lax.cond(finite, update, lambda state, grads: state, state, grads)
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=exp.schedule(state.step),
                   max_gap=gap)
    return new, metrics

  level = config.train.get("xla_optimization_level")
  options = None if level is None else {"xla_backend_optimization_level": level}
  jitted = jax.jit(step_fn, in_shardings=(exp.replicated, exp.batch_sharding, exp.replicated),
                   out_shardings=(exp.replicated, exp.replicated), donate_argnums=0,
                   compiler_options=options)
  frozen = None if pretrained is None else jax.device_put(pretrained.params, exp.replicated)

  def step(state: TrainState, batch: Any):
    return jitted(state, batch, frozen)

  step.jitted, step.frozen = jitted, frozen  # for cost analysis (`experiments/benchmark.py`)
  return step


def cost_analysis(compiled: Any) -> dict[str, float]:
  """XLA's counts for a compiled executable ("flops", "bytes accessed", ...): those of the
  program each device runs (on a mesh of D devices, the whole step does D times the work)."""
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """The train step compiled ahead of time, so that no step's time includes compilation."""
  run: Callable[[TrainState, Any], tuple[TrainState, dict]]
  seconds: float  # tracing, lowering and compiling
  flops: float  # XLA's count for one step over every device (nan where XLA has none)
  executable: Any  # the compiled program, for its HLO and memory (`experiments/benchmark.py`)


def lower_step(exp: Experiment, step: Callable, state: TrainState) -> Any:
  """The step of `make_train_step`, traced and lowered for `state` and the source's batch."""
  return step.jitted.lower(state, exp.source.abstract_batch(), step.frozen)


def compile_step(exp: Experiment, step: Callable, state: TrainState) -> CompiledStep:
  start = time.perf_counter()
  compiled = lower_step(exp, step, state).compile()
  seconds = time.perf_counter() - start
  flops = float(cost_analysis(compiled).get("flops", float("nan"))) * exp.mesh.size
  return CompiledStep(run=lambda state, batch: compiled(state, batch, step.frozen),
                      seconds=seconds, flops=flops, executable=compiled)


# --------------------------------------------------------------------------- the loop


class _StopRequest:
  """SIGTERM / SIGINT during a run. Until `flag_only()` (the loop's start) a signal raises
  `cli.Stopped`: nothing has been trained that a checkpoint would miss. From then on it sets a
  flag the loop checks after every step (it saves and stops) and that the final save and close
  wait under; `interruptible` runs a long side task (an evaluation) that a signal cuts short,
  so that the loop can save and stop at once.

  Several processes must agree: a preemption often reaches one host only, and a process that
  stopped alone would leave the others waiting in a collective (the next step's all-reduce or
  the checkpoint's save). So with several processes the flag is acted on only where `agree`
  runs, at the loop's sync points (the same steps on every process): the largest signal number
  of any process, all-gathered, becomes every process's `agreed` (one process alone: its own
  flag at that moment), and the loop saves and stops on `agreed` only. A signal then does not cut an
  evaluation short either (its collectives would wait for the process that left). (Orbax and
  jax's own preemption sync, `multihost_utils.reached_preemption_sync_point`, hear SIGTERM
  through a C++ handler that this Python handler replaces, and not SIGINT.)"""

  def __init__(self):
    self.signum = None  # set by the handler, at any time
    self.agreed = None  # set by `agree` only: what the loop acts on
    self._raise = True
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum  # kept even if the raise below lands where it is swallowed (a gc
    if self._raise:       # callback): the loop then stops after its first step
      raise cli.Stopped(signum)

  def flag_only(self) -> None:
    self._raise = False

  def early(self) -> Optional[int]:
    """The signal to stop on before the next sync point: this process's, if it runs alone."""
    return self.signum if jax.process_count() == 1 else None

  def agree(self, step: int) -> Optional[int]:
    """The stop every process acts on (a collective with several processes: call it at the same
    step on each); None to go on."""
    signum = self.signum  # read once: the handler may set it meanwhile
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      signums = np.asarray(multihost_utils.process_allgather(np.int32(signum or 0)))
      signum = int(signums.max()) or None
      if signum:
        print(f"process {jax.process_index()}: stopping at step {step}, signal {signum} reached "
              f"process(es) {np.flatnonzero(signums).tolist()}", flush=True)
        self.signum = signum
    self.agreed = signum
    return signum

  def interruptible(self, fn: Callable[[], Any]) -> None:
    if self.early() or self.agreed:
      return
    self._raise = jax.process_count() == 1
    try:
      fn()
    except cli.Stopped as e:
      self.signum = e.signum
    finally:
      self._raise = False

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _MetricsLog:
  """DIR/metrics.jsonl (one JSON object per logged step) and TensorBoard events
  (`summaries.ScalarWriter`, no TensorFlow import), and with train.wandb_project a Weights &
  Biases run too, all on the chief process only."""

  def __init__(self, workdir: str, resume_step: int, config: ml_collections.ConfigDict):
    from flow_maps import summaries
    self.is_chief = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.writers = []
    if self.is_chief:
      self._truncate_after(resume_step)
      self.writers.append(summaries.ScalarWriter(workdir))
      if config.train.wandb_project:
        self.writers.append(summaries.WandbWriter(workdir, config.train.wandb_project,
                                                  config.to_dict()))

  def _truncate_after(self, step: int) -> None:
    """Drops lines logged after the checkpoint we resume from: they will be logged again."""
    workdir_lib.truncate_metrics(self.path, step)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self.is_chief:
      for writer in self.writers:
        writer.write_scalars(step, scalars)
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **scalars}) + "\n")

  def write_eval(self, step: int, output: dict) -> None:
    """An evaluator's scalars and PNG images into TensorBoard as eval/<name> (its JSONL is the
    evaluator's own, DIR/eval/metrics.jsonl)."""
    for writer in self.writers:  # none off the chief
      writer.write_scalars(step, {f"eval/{k}": v for k, v in output.get("scalars", {}).items()})
      for name, png in output.get("images", {}).items():
        writer.write_png(step, f"eval/{name}", png)

  def close(self) -> None:
    for writer in self.writers:
      writer.flush()
      writer.close()


class _Profile:
  """A profiler trace of steps [start, start + count) into DIR/profile/ (chief process only)."""

  def __init__(self, workdir: str, start: int, count: int):
    self.directory = os.path.join(workdir, "profile")
    self.start, self.end = start, start + count
    self.active = False
    self.enabled = count > 0 and jax.process_index() == 0

  def before(self, step: int) -> None:
    if self.enabled and not self.active and self.start <= step < self.end:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state: Any) -> None:
    if self.active and step >= self.end:
      jax.block_until_ready(state)  # the traced steps' device work inside the trace
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      print(f"profile of steps {self.start} to {self.end - 1} -> {self.directory}", flush=True)


class _Clock:
  """Training time: the wall clock of the step windows alone, from dispatching a window's first
  step to reading its metrics, so that compilation (done before the loop), evaluation,
  checkpointing and logging are not in it. Carried across a resume in the checkpoint's metadata;
  a checkpoint written without it starts the count at its step (`since`)."""

  def __init__(self, seconds: Optional[float], start: int):
    self.seconds = 0.0 if seconds is None else float(seconds)
    self.since = start if seconds is None else 0
    self._start = None

  def start(self) -> None:
    self._start = time.perf_counter()

  def stop(self) -> float:
    """The seconds since `start`, added to the total."""
    dt = time.perf_counter() - self._start
    self.seconds += dt
    return dt

  def eta(self, step: int, num_steps: int) -> str:
    if step <= self.since or self.seconds <= 0:
      return "?"
    return _format_duration((num_steps - step) * self.seconds / (step - self.since))

  def metadata(self) -> dict:
    return {"train_seconds": self.seconds} if self.since == 0 else {}


def compute_record(step: int, clock: _Clock, batch_size: int, step_flops: float) -> dict:
  """What an evaluation point cost (`docs/curves.md`): optimiser steps, examples
  seen, training wall-clock seconds without compilation and evaluation (None if the run resumed
  from a checkpoint that did not record it) and XLA-counted training FLOPs (None where XLA gives
  no count)."""
  return {"step": step, "examples": step * batch_size,
          "train_seconds": clock.seconds if clock.since == 0 else None,
          "train_flops": step * step_flops if np.isfinite(step_flops) else None}


# An evaluator (the project's is `run_eval.make_evaluator`, built in `run.py`): called at the
# loop's evaluation steps (`eval_steps`) with the state and `compute_record`; it writes its own
# files and returns {"scalars": {name: value}, "images": {name: PNG bytes}}, which the loop
# writes to TensorBoard beside the training scalars as eval/<name>. The loop never imports the
# evaluation layer.
Evaluator = Callable[["TrainState", dict], dict]


def eval_steps(tc: ml_collections.ConfigDict) -> frozenset[int]:
  """The steps the loop evaluates at: with eval_schedule 'every', each multiple of eval_every
  before the last step (train_and_eval evaluates the final state in full); with 'log',
  eval_points steps that double up to and including the last, num_steps / 2^(K-1), ...,
  num_steps / 2, num_steps (fewer if some round to the same step)."""
  if tc.eval_schedule == "log":
    k = tc.eval_points
    return frozenset(max(1, round(tc.num_steps * 2.0 ** (i - k + 1))) for i in range(k))
  if tc.eval_every:
    return frozenset(range(tc.eval_every, tc.num_steps, tc.eval_every))
  return frozenset()


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def write_run_files(exp: Experiment, workdir: str, state: TrainState,
                    pretrained: Optional[pretrained_lib.Pretrained] = None) -> None:
  """The resolved config and what was derived from it, written at start (through epath: a
  gs:// workdir gets them too, each in one write, without the local atomic rename)."""
  if jax.process_index() != 0:
    return
  directory = ckpt_lib.workdir_path(workdir)
  directory.mkdir(parents=True, exist_ok=True)

  def write(name: str, text: str) -> None:
    if "://" in os.fspath(directory):
      (directory / name).write_text(text)
    else:
      workdir_lib.atomic_write(os.fspath(directory / name), text)

  write(workdir_lib.CONFIG_FILE, exp.config.to_json_best_effort(indent=2, sort_keys=True))
  layout = exp.objective.layout
  n_diag, n_off = layout.counts(exp.config.train.batch_size)
  info = {
      "devices": exp.mesh.size,
      "processes": jax.process_count(),
      "platform": jax.devices()[0].platform,
      "global_batch": exp.config.train.batch_size,
      "per_device_batch": exp.config.train.batch_size // exp.mesh.size,
      "diagonal_rows": n_diag,
      "off_diagonal_rows": n_off,
      "layout_period": layout.period,
      "data_shape": list(exp.data_shape),
      "parameters": parameter_count(state.params),
  }
  if pretrained is not None:
    info["pretrained"] = pretrained.info
  write("run_info.json", json.dumps(info, indent=2))
  from clu import parameter_overview  # a table of every parameter: name, shape, dtype, size
  write("parameters.txt", parameter_overview.get_parameter_overview(
      jax.device_get(state.params), include_stats=False) + "\n")


def restore_or_init(exp: Experiment, manager: ckpt_lib.Checkpoints) -> TrainState:
  """The newest intact checkpoint in the workdir if there is one (bad ones are reported and
  moved aside), else a fresh state."""
  state = init_state(exp)
  if manager.latest_step() is not None:
    state = manager.restore_latest_intact(state, move_aside=True)
  if jax.process_count() > 1:  # every process must resume from the same step
    from jax.experimental import multihost_utils
    steps = np.asarray(multihost_utils.process_allgather(np.int32(state.step)))
    if len(set(steps.tolist())) > 1:
      raise ckpt_lib.CheckpointError(
          f"the processes restored different steps {steps.tolist()} from {manager.directory}: "
          "do they see the same workdir (a shared filesystem)?")
  return state


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    terms = ", ".join(f"{k}={v}" for k, v in bad.items())
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {terms}. The state was not updated and no checkpoint "
        "was written for this step")


def _last_checkpoint_verdict(manager: ckpt_lib.Checkpoints, target: Any) -> str:
  """What the non-finite-loss message may claim about the last checkpoint, once verified."""
  step = manager.latest_step()
  if step is None:
    return "; there is no checkpoint yet."
  problem = manager.verify(target, step)
  if problem is None:
    return f"; the last checkpoint (step {step}) was verified intact."
  return f"; the last checkpoint (step {step}) FAILED verification: {problem}."


def train(config: ml_collections.ConfigDict, workdir: str, *,
          exp: Optional[Experiment] = None, evaluators: tuple[Evaluator, ...] = (),
          allow_config_change: tuple[str, ...] = ()) -> tuple[TrainState, Optional[int]]:
  """Trains to `config.train.num_steps`, resuming from the workdir's newest intact checkpoint.

  At the steps of `eval_steps` (train.eval_schedule) the loop calls each of `evaluators`
  (see `Evaluator`); without evaluators it evaluates nothing.

  On resume the stored DIR/config.json must agree with `config` on every field that changes the
  run's meaning, except those in `allow_config_change` (`workdir.check_resume`); changes are
  recorded in DIR/config_changes.jsonl. Returns the final state and, if the run was stopped by
  SIGTERM or SIGINT (after saving a checkpoint), that signal's number, else None.
  """
  exp = exp or build_experiment(config)
  tc = config.train
  workdir_lib.check_allowed_names(allow_config_change, config)
  # The frozen teacher of distillation, checked before anything is written or compiled.
  frozen = (pretrained_lib.load(config, exp.data_shape)
            if config.objective.velocity == "pretrained" else None)
  with contextlib.ExitStack() as stack:
    stop = stack.enter_context(_StopRequest())  # first in, last out: it guards the closing
    if jax.process_index() == 0:
      stack.enter_context(workdir_lib.RunLock(workdir))
    manager = ckpt_lib.Checkpoints(workdir, keep=tc.keep_checkpoints)
    stack.callback(manager.close)
    changes = []
    if manager.latest_step() is not None:
      if workdir_lib.stored_config(workdir) is None:
        print(f"warning: {workdir} has checkpoints but no {workdir_lib.CONFIG_FILE}: resuming "
              "without comparing configs", file=sys.stderr, flush=True)
      changes = workdir_lib.check_resume(workdir, config, allow_config_change)
    return _train(exp, workdir, manager, stack, stop, changes, frozen, tuple(evaluators))


def _train(exp: Experiment, workdir: str, manager: ckpt_lib.Checkpoints,
           stack: contextlib.ExitStack, stop: _StopRequest, changes: list,
           frozen: Optional[pretrained_lib.Pretrained], evaluators: tuple[Evaluator, ...]
           ) -> tuple[TrainState, Optional[int]]:
  config = exp.config
  tc = config.train
  state = restore_or_init(exp, manager)
  start = int(state.step)
  batches = exp.source.batches(start)  # opens the data (a missing dataset fails here)
  stack.callback(batches.close)
  # The steps of the current logging window before the checkpoint, so that the first line
  # after a resume averages the same steps as an uninterrupted run's.
  stored = (manager.stored_metadata(start) or {}) if start else {}
  window: dict[str, list[float]] = dict(stored.get("metrics_window", {}))
  # Training seconds so far: the ETA and the compute axes continue across the resume.
  clock = _Clock(stored.get("train_seconds"), start)
  if jax.process_index() == 0:
    workdir_lib.record_config_changes(workdir, start, changes)
  write_run_files(exp, workdir, state, frozen)
  step_fn = compile_step(exp, make_train_step(exp, frozen), state)
  log = _MetricsLog(workdir, start, config)
  stack.callback(log.close)
  evaluate_at = eval_steps(tc) if evaluators else frozenset()
  sync_every = min(SYNC_EVERY, tc.log_every)
  pending: list[tuple[int, dict]] = []
  window_seconds, window_steps = 0.0, 0
  step = start
  stopped_by = None
  # Signals from here on only set a flag: the loop saves and stops, and the final save and
  # close (the stack's callbacks) are never cut short.
  stop.flag_only()
  if jax.process_index() == 0:
    flops = (f", {step_fn.flops / 1e9:.3g} GFLOP per step" if np.isfinite(step_fn.flops)
             else "")
    print(f"{'resuming at' if start else 'starting'} step {start} of {tc.num_steps} in {workdir}; "
          f"{exp.mesh.size} device(s), global batch {tc.batch_size}, "
          f"{parameter_count(state.params):,} parameters; step compiled in "
          f"{step_fn.seconds:.1f} s{flops}", flush=True)
  profile = _Profile(workdir, tc.profile_start, tc.profile_steps)
  stack.callback(profile.stop)
  checkpoint_extra = lambda: {"metrics_window": window, **clock.metadata()}
  clock.start()
  while step < tc.num_steps:
    batch = next(batches)
    profile.before(step)
    state, metrics = step_fn.run(state, batch)
    step += 1
    profile.after(step, state)
    pending.append((step, metrics))
    boundary = (step % tc.log_every == 0 or step % tc.checkpoint_every == 0
                or step in evaluate_at)
    if len(pending) < sync_every and not boundary and step < tc.num_steps and not stop.early():
      continue
    try:
      for k, m in jax.device_get(pending):
        m = {name: float(v) for name, v in m.items()}
        _check_finite(k, m)
        for name, v in m.items():
          window.setdefault(name, []).append(v)
    except NonFiniteLossError as e:
      raise NonFiniteLossError(f"{e}{_last_checkpoint_verdict(manager, state)}") from None
    window_seconds += clock.stop()  # everything after this line until clock.start() is not training
    window_steps += len(pending)
    pending = []
    stop.agree(step)
    if step % tc.log_every == 0 or step == tc.num_steps:
      scalars = {name: float(np.mean(v)) for name, v in window.items()}
      scalars["steps_per_sec"] = window_steps / max(window_seconds, 1e-9)
      log.write(step, scalars)
      if jax.process_index() == 0:
        terms = "  ".join(f"{k} {scalars[k]:.4g}" for k in window
                          if k not in ("loss", "learning_rate", "max_gap"))
        print(f"step {step}/{tc.num_steps}  loss {scalars['loss']:.4g}  {terms}  "
              f"{scalars['steps_per_sec']:.1f} steps/s  ETA {clock.eta(step, tc.num_steps)}",
              flush=True)
      window, window_seconds, window_steps = {}, 0.0, 0
    saved = step % tc.checkpoint_every == 0 or step == tc.num_steps or bool(stop.agreed)
    if saved:
      manager.save(step, state, extra=checkpoint_extra())
    if step in evaluate_at:
      record = compute_record(step, clock, tc.batch_size, step_fn.flops)
      stop.interruptible(lambda: [log.write_eval(step, evaluate(state, record))
                                  for evaluate in evaluators])
      if stop.agree(step) and not saved:  # the signal came during the evaluation
        manager.save(step, state, extra=checkpoint_extra())
    if stop.agreed:
      stopped_by = stop.agreed
      if jax.process_index() == 0:
        print(f"received signal {stop.agreed}: saved a checkpoint at step {step}, stopping",
              flush=True)
      break
    clock.start()
  return state, stopped_by
