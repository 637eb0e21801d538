"""`--mode=eval` and `--mode=sample`, and the evaluator the training loop is handed.

Outputs (step = the checkpoint's step; file names in `results.py`):
  - eval:   DIR/eval/step_<step>_<params>_n<num_samples>.json (and .png for 2-D data), a table
            on stdout, a line of DIR/eval/metrics.jsonl and the same scalars in TensorBoard
            (tags eval/<metric>_n<N>, e.g. eval/kl_n1); once a weights and sample count has two
            or more checkpoints evaluated, DIR/eval/best.json: the best checkpoint for each
            number of steps, as the paper reports. `eval.checkpoint` picks the checkpoint(s):
            latest, all (every kept one), or a step;
  - sample: DIR/samples/step_<step>_<params>_n<num_samples>/n<N>.npy (2-D: float32 [count, 2]) or n<N>.npz and
            n<N>.png (images: an .npz of float32 [count, H, W, C] in [-1, 1] and a PNG grid);
            conditional runs name them n<N>_label_<c|all>_w<w> and save labels_<c|all>.npy.
Evaluation and sampling use `config.eval.params` (an EMA by default; `online` on request), and
draw every random number from the run's seed, so the same checkpoint gives the same numbers.
The config was validated before anything here runs (`validation.py`, `run.py`): nothing here
raises a config error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from flow_maps import checkpoints, train
from flow_maps import workdir as workdir_lib
from flow_maps import data as data_lib
from flow_maps.evaluation import results as results_lib

EVAL_SALT = 0x5EED  # eval keys derive from the run's seed, apart from training's


def _checked(config, workdir: str, allow_config_change: tuple[str, ...]) -> train.Experiment:
  """The experiment, after checking that the workdir holds a run of this config's data set and
  network (DIR/config.json); writes nothing into a workdir that is not a run's."""
  exp = train.build_experiment(config)
  workdir_lib.check_allowed_names(allow_config_change, config)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise checkpoints.CheckpointError(
        f"no checkpoint in {directory}: train first (--mode=train, same --workdir)")
  workdir_lib.check_resume(workdir, config, allow_config_change, what="evaluating",
                           fields=workdir_lib.SAME_RUN_FOR_EVAL)
  return exp


def states(config, workdir: str, allow_config_change: tuple[str, ...] = (),
           which: str = "latest") -> tuple[train.Experiment, Iterator[train.TrainState]]:
  """The experiment and the states of the checkpoints `which` names (`eval.checkpoint`): the
  newest intact one ("latest"), every kept one, oldest first ("all"), or the step "<step>".
  A clear error if there is none, or the step is not kept."""
  exp = _checked(config, workdir, allow_config_change)
  manager = checkpoints.Checkpoints(workdir, create=False)
  steps = manager.all_steps()
  if not steps:
    manager.close()
    raise checkpoints.CheckpointError(
        f"no checkpoint in {manager.directory}: train first (--mode=train, same --workdir)")
  if which not in ("latest", "all") and int(which) not in steps:
    manager.close()
    raise checkpoints.CheckpointError(
        f"eval.checkpoint={which}: no checkpoint of step {which} in {manager.directory}; it "
        f"keeps steps {', '.join(map(str, steps))}")

  def restored():
    try:
      if which == "latest":
        yield manager.restore_latest_intact(train.init_state(exp), move_aside=False)
      else:
        for step in (steps if which == "all" else [int(which)]):
          yield manager.restore(train.init_state(exp), step)
    finally:
      manager.close()

  return exp, restored()


def load(config, workdir: str, allow_config_change: tuple[str, ...] = ()
         ) -> tuple[train.Experiment, train.TrainState]:
  """The experiment and the newest intact checkpoint's state (see `states`)."""
  exp, found = states(config, workdir, allow_config_change)
  state = next(found)
  found.close()
  return exp, state


def check_ready(config) -> None:
  """Fails fast, before any training, when an evaluation of `config` could not run: the files
  image FID needs (`image_eval.check_ready`); toy data needs none."""
  if not data_lib.is_toy(config):
    from flow_maps.evaluation import image_eval
    image_eval.check_ready(config)


def _eval_key(config) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_SALT)


def _write_json(path: str, result: dict) -> None:
  workdir_lib.atomic_write(path, json.dumps(result, indent=2))


def evaluate(config, workdir: str, allow_config_change: tuple[str, ...] = ()) -> dict:
  """Evaluates the checkpoint(s) `config.eval.checkpoint` names, oldest first, each into its own
  files (see the module docstring) and TensorBoard; returns the newest one's result."""
  exp, found = states(config, workdir, allow_config_change, config.eval.checkpoint)
  writer = None
  if jax.process_index() == 0:
    from flow_maps import summaries
    writer = summaries.ScalarWriter(workdir)
  out = []
  try:
    for state in found:
      result = evaluate_state(exp, state, workdir)
      if writer is not None:
        _write_summaries(writer, workdir, result)
      out.append(result)
  finally:
    if writer is not None:
      writer.close()
  return out[-1]


def _figure(workdir: str, result: dict) -> dict[str, bytes]:
  """{"samples": the PNG bytes of the result's figure} (2-D data), else {}."""
  path = os.path.join(workdir, "eval", result.get("figure") or "")
  if not result.get("figure") or not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    return {"samples": f.read()}


def _write_summaries(writer, workdir: str, result: dict) -> None:
  step = result["step"]
  writer.write_scalars(step, {f"eval/{k}": v for k, v in results_lib.scalars(result).items()})
  for name, png in _figure(workdir, result).items():
    writer.write_png(step, f"eval/{name}", png)


def make_evaluator(exp: train.Experiment, workdir: str, num_samples: Optional[int] = None
                   ) -> Callable[[train.TrainState, dict], dict]:
  """The evaluator `train.train` calls at its evaluation steps: evaluates the state with
  `num_samples` samples (None: eval.num_samples), records the loop's compute so far (see
  `train.train`) with the result, and returns the scalars and figure for TensorBoard."""

  def evaluator(state: train.TrainState, compute: dict) -> dict:
    result = evaluate_state(exp, state, workdir, num_samples=num_samples, compute=compute)
    return {"scalars": results_lib.scalars(result), "images": _figure(workdir, result)}

  return evaluator


def _with_num_samples(config, num_samples: Optional[int]):
  if num_samples is None or num_samples == config.eval.num_samples:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.num_samples = num_samples
  return config


def evaluate_state(exp: train.Experiment, state: train.TrainState, workdir: str, *,
                   num_samples: Optional[int] = None, compute: Optional[dict] = None) -> dict:
  """Evaluates a train state with `num_samples` samples (None: eval.num_samples) into
  DIR/eval/step_<step>_<params>_n<num_samples>.json and a line of DIR/eval/metrics.jsonl
  (with `compute`, the training loop's record of time, steps, examples and FLOPs, if given);
  returns the result."""
  config = _with_num_samples(exp.config, num_samples)
  step = int(state.step)
  params = exp.select_params(state, config.eval.params)
  eval_dir = os.path.join(workdir, "eval")
  out = os.path.join(eval_dir, results_lib.stem(step, config.eval.params,
                                                config.eval.num_samples))
  os.makedirs(eval_dir, exist_ok=True)
  png = None  # the 2-D figure
  if exp.conditioning is not None and data_lib.is_toy(config):
    from flow_maps.evaluation import toy2d_eval
    dataset = data_lib.toy_dataset(config)
    bind = lambda condition: exp.model.bind(params, condition=condition)
    guided = dict(learned=exp.conditioning.learned_guidance, scales=tuple(config.eval.guidance),
                  label=config.eval.label, map_scale=exp.conditioning.map_scale,
                  sampler=config.eval.sampler)
    result = toy2d_eval.evaluate_guided(
        bind, dataset, exp.interpolant, key=_eval_key(config),
        steps=tuple(config.eval.sampling_steps), ode_steps=tuple(config.eval.ode_steps), num_samples=config.eval.num_samples,
        batch_size=config.eval.batch_size, bins=config.eval.kl_bins, **guided)
    table = toy2d_eval.format_guided_table(result)
    figure = toy2d_eval.guided_figure_samples(bind, dataset, exp.interpolant,
                                              key=_eval_key(config), **guided)
    if jax.process_index() == 0:
      toy2d_eval.plot_guided(figure, out + ".png", domain=dataset.domain,
                             title=f"{config.objective.residual}, step {step}, "
                                   f"{config.eval.params} weights")
      png = out + ".png"
  elif config.data.name == "mixture_nd":  # d-D: no histogram KL (`mixture_eval.py`)
    from flow_maps.evaluation import mixture_eval
    result = mixture_eval.evaluate_config(exp.model.bind(params), data_lib.toy_dataset(config),
                                          exp.interpolant, config, key=_eval_key(config))
    table = mixture_eval.format_table(result)
  elif data_lib.is_toy(config):
    from flow_maps.evaluation import toy2d_eval
    dataset = data_lib.toy_dataset(config)
    v = exp.model.bind(params)
    result = toy2d_eval.evaluate(
        v, dataset, exp.interpolant, key=_eval_key(config), steps=tuple(config.eval.sampling_steps),
        ode_steps=tuple(config.eval.ode_steps), num_samples=config.eval.num_samples,
        batch_size=config.eval.batch_size, bins=config.eval.kl_bins, sampler=config.eval.sampler)
    table = toy2d_eval.format_table(result)
    figure = toy2d_eval.figure_samples(v, dataset, exp.interpolant, key=_eval_key(config),
                                       steps=tuple(config.eval.sampling_steps),
                                       sampler=config.eval.sampler)
    if jax.process_index() == 0:
      toy2d_eval.plot_samples(figure, np.asarray(dataset.sample(_eval_key(config), 20_000)),
                              out + ".png", domain=dataset.domain,
                              title=f"{config.objective.residual}, step {step}, "
                                    f"{config.eval.params} weights")
      png = out + ".png"
  elif exp.conditioning is not None:
    from flow_maps.evaluation import image_eval
    result = image_eval.evaluate_guided(lambda c: exp.model.bind(params, condition=c), exp,
                                        config, key=_eval_key(config), workdir=workdir)
    table = image_eval.format_guided_table(result)
  else:
    from flow_maps.evaluation import image_eval
    v = exp.model.bind(params)
    result = image_eval.evaluate(v, exp, config, key=_eval_key(config), workdir=workdir)
    table = image_eval.format_table(result)
  result = {"step": step, "params": config.eval.params, "objective": config.objective.residual,
             **result}
  if compute is not None:
    result["compute"] = compute
  if png is not None:
    result["figure"] = os.path.basename(png)  # beside the JSON
  if jax.process_index() == 0:
    _write_json(out + ".json", result)
    line = {"step": step, "params": config.eval.params, "num_samples": config.eval.num_samples,
            "compute": compute, **results_lib.scalars(result)}
    with open(os.path.join(eval_dir, results_lib.METRICS_FILE), "a") as f:
      f.write(json.dumps(line) + "\n")
    print(f"evaluation of step {step} ({config.eval.params} weights, "
          f"{config.eval.num_samples} samples) -> {out}.json")
    print(table, flush=True)
    best = results_lib.best(results_lib.scan(eval_dir))
    if any(g["checkpoints"] > 1 for g in best["groups"]):
      _write_json(os.path.join(eval_dir, results_lib.BEST_FILE), best)
      print(results_lib.format_best(best), flush=True)
  return result


def sample(config, workdir: str, allow_config_change: tuple[str, ...] = ()) -> str:
  """Writes DIR/samples/step_<step>_<params>_n<num_samples>/ (`sample.num_samples`) for every
  step count in config.sample.sampling_steps."""
  exp, state = load(config, workdir, allow_config_change)
  step = int(state.step)
  params = exp.select_params(state, config.eval.params)
  out = os.path.join(workdir, "samples", results_lib.stem(step, config.eval.params,
                                                         config.sample.num_samples))
  os.makedirs(out, exist_ok=True)
  if exp.conditioning is not None and data_lib.is_toy(config):
    from flow_maps.evaluation import toy2d_eval
    toy2d_eval.write_guided_samples(lambda c: exp.model.bind(params, condition=c), exp, config,
                                    out, key=_eval_key(config))
  elif data_lib.is_toy(config):
    from flow_maps import sampling
    v = exp.model.bind(params)
    sampler = sampling.map_sampler(config.eval.sampler, exp.interpolant)
    for n in config.sample.sampling_steps:
      noise = sampling.noise(_eval_key(config), config.sample.num_samples, exp.data_shape,
                             exp.interpolant.sigma0)
      x = sampler(v, noise, n, jax.random.fold_in(_eval_key(config), 1))
      np.save(os.path.join(out, f"n{n}.npy"), np.asarray(x, np.float32))
  elif exp.conditioning is not None:
    from flow_maps.evaluation import image_eval
    image_eval.write_guided_samples(lambda c: exp.model.bind(params, condition=c), exp, config,
                                    out, key=_eval_key(config))
  else:
    from flow_maps.evaluation import image_eval
    image_eval.write_samples(exp.model.bind(params), exp, config, out, key=_eval_key(config))
  print(f"samples of step {step} ({config.eval.params} weights) -> {out}", flush=True)
  return out
