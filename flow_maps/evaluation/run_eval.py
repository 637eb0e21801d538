"""`--mode=eval` and `--mode=sample`: load the workdir's latest checkpoint, then evaluate or sample.

Outputs (step = the checkpoint's step):
  - eval:   DIR/eval/step_<step>.json (and .png for 2-D data), a table on stdout; once two or
            more checkpoints are evaluated (`train.eval_every`), DIR/eval/best.json: the best
            checkpoint for each number of steps, as the paper reports (a fixed checkpoint's
            numbers stay in its step_<step>.json);
  - sample: DIR/samples/step_<step>/n<N>.npy (2-D: float32 [count, 2]) or n<N>.npz and
            n<N>.png (images: an .npz of float32 [count, H, W, C] in [-1, 1] and a PNG grid);
            conditional runs name them n<N>_label_<c|all>_w<w> and save labels_<c|all>.npy.
Evaluation and sampling use `config.eval.params` (an EMA by default; `online` on request), and
draw every random number from the run's seed, so the same checkpoint gives the same numbers.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from flow_maps import checkpoints, train
from flow_maps import workdir as workdir_lib
from flow_maps import data as data_lib

EVAL_SALT = 0x5EED  # eval keys derive from the run's seed, apart from training's


def load(config, workdir: str, allow_config_change: tuple[str, ...] = ()
         ) -> tuple[train.Experiment, train.TrainState]:
  """The experiment and the newest intact checkpoint's state; a clear error if there is none,
  or if the config's data set or network is not the checkpoint's run's (DIR/config.json)."""
  exp = train.build_experiment(config)
  workdir_lib.check_allowed_names(allow_config_change, config)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):  # and write nothing into a workdir that is not a run's
    raise checkpoints.CheckpointError(
        f"no checkpoint in {directory}: train first (--mode=train, same --workdir)")
  workdir_lib.check_resume(workdir, config, allow_config_change, what="evaluating",
                           fields=workdir_lib.SAME_RUN_FOR_EVAL)
  manager = checkpoints.Checkpoints(workdir, create=False)
  try:
    if manager.latest_step() is None:
      raise checkpoints.CheckpointError(
          f"no checkpoint in {manager.directory}: train first (--mode=train, same --workdir)")
    state = manager.restore_latest_intact(train.init_state(exp), move_aside=False)
  finally:
    manager.close()
  return exp, state


def _eval_key(config) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_SALT)


def _write_json(path: str, result: dict) -> None:
  workdir_lib.atomic_write(path, json.dumps(result, indent=2))


def evaluate(config, workdir: str, allow_config_change: tuple[str, ...] = ()) -> dict:
  """Evaluates the latest checkpoint and writes DIR/eval/step_<step>.json; returns the result."""
  exp, state = load(config, workdir, allow_config_change)
  return evaluate_state(exp, state, workdir)


def evaluate_state(exp: train.Experiment, state: train.TrainState, workdir: str) -> dict:
  """Evaluates a train state and writes DIR/eval/step_<step>.json; returns the result."""
  config = exp.config
  step = int(state.step)
  params = exp.select_params(state, config.eval.params)
  out = os.path.join(workdir, "eval", f"step_{step}")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  if exp.conditioning is not None and data_lib.is_toy(config):
    from flow_maps.evaluation import toy2d_eval
    dataset = data_lib.toy_dataset(config)
    bind = lambda condition: exp.model.bind(params, condition=condition)
    guided = dict(learned=exp.conditioning.learned_guidance, scales=tuple(config.eval.guidance),
                  label=config.eval.label, map_scale=exp.conditioning.map_scale)
    result = toy2d_eval.evaluate_guided(
        bind, dataset, exp.interpolant, key=_eval_key(config), steps=tuple(config.eval.steps),
        ode_steps=tuple(config.eval.ode_steps), num_samples=config.eval.num_samples,
        batch_size=config.eval.batch_size, bins=config.eval.kl_bins, **guided)
    table = toy2d_eval.format_guided_table(result)
    figure = toy2d_eval.guided_figure_samples(bind, dataset, exp.interpolant,
                                              key=_eval_key(config), **guided)
    if jax.process_index() == 0:
      toy2d_eval.plot_guided(figure, out + ".png", domain=dataset.domain,
                             title=f"{config.objective.residual}, step {step}, "
                                   f"{config.eval.params} weights")
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
        v, dataset, exp.interpolant, key=_eval_key(config), steps=tuple(config.eval.steps),
        ode_steps=tuple(config.eval.ode_steps), num_samples=config.eval.num_samples,
        batch_size=config.eval.batch_size, bins=config.eval.kl_bins, sampler=config.eval.sampler)
    table = toy2d_eval.format_table(result)
    figure = toy2d_eval.figure_samples(v, dataset, exp.interpolant, key=_eval_key(config),
                                       steps=tuple(config.eval.steps),
                                       sampler=config.eval.sampler)
    if jax.process_index() == 0:
      toy2d_eval.plot_samples(figure, np.asarray(dataset.sample(_eval_key(config), 20_000)),
                              out + ".png", domain=dataset.domain,
                              title=f"{config.objective.residual}, step {step}, "
                                    f"{config.eval.params} weights")
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
  if jax.process_index() == 0:
    _write_json(out + ".json", result)
    print(f"evaluation of step {step} ({config.eval.params} weights) -> {out}.json")
    print(table, flush=True)
    best = best_per_step_count(os.path.dirname(out), config.eval.params)
    if best["checkpoints"] > 1:
      _write_json(os.path.join(os.path.dirname(out), "best.json"), best)
      print(format_best(best), flush=True)
  return result


def best_per_step_count(eval_dir: str, params: str) -> dict:
  """The published protocol (`docs/method.md` §6): for each number of steps N, the lowest score
  ("fid" for images, "kl" for 2-D, "flow_map_error" for the d-D mixture) over every checkpoint
  evaluated with `params` in `eval_dir`.

  Returns {"metric", "params", "checkpoints": count, "best": {N: {"value", "step"}}}.
  """
  results = []
  for name in sorted(os.listdir(eval_dir)):
    if name.startswith("step_") and name.endswith(".json"):
      with open(os.path.join(eval_dir, name)) as f:
        result = json.load(f)
      if result.get("params") == params:
        results.append(result)
  metric = "fid" if any("fid" in r for r in results) else \
      "kl" if any("kl" in r for r in results) else "flow_map_error"  # d-D mixture: no KL
  best = {}
  for result in results:
    for n, value in result.get(metric, {}).items():
      if n not in best or value < best[n]["value"]:
        best[n] = {"value": value, "step": result["step"]}
  best = dict(sorted(best.items(), key=lambda item: int(item[0])))
  return {"metric": metric, "params": params, "checkpoints": len(results), "best": best}


def format_best(best: dict) -> str:
  lines = [f"best checkpoint per N over {best['checkpoints']} evaluated ({best['params']} "
           f"weights; the published protocol, docs/method.md §6):"]
  lines += [f"{n:>4}  {b['value']:>10.4g}  (step {b['step']})" for n, b in best["best"].items()]
  return "\n".join(lines)


def sample(config, workdir: str, allow_config_change: tuple[str, ...] = ()) -> str:
  """Writes DIR/samples/step_<step>/ for every step count in config.sample.steps."""
  exp, state = load(config, workdir, allow_config_change)
  step = int(state.step)
  params = exp.select_params(state, config.eval.params)
  out = os.path.join(workdir, "samples", f"step_{step}")
  os.makedirs(out, exist_ok=True)
  if exp.conditioning is not None and data_lib.is_toy(config):
    from flow_maps.evaluation import toy2d_eval
    toy2d_eval.write_guided_samples(lambda c: exp.model.bind(params, condition=c), exp, config,
                                    out, key=_eval_key(config))
  elif data_lib.is_toy(config):
    from flow_maps import sampling
    v = exp.model.bind(params)
    sampler = sampling.map_sampler(config.eval.sampler, exp.interpolant)
    for n in config.sample.steps:
      noise = exp.interpolant.sigma0 * jax.random.normal(
          _eval_key(config), (config.sample.num_samples,) + exp.data_shape)
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
