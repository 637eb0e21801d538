"""A finished run's network as a frozen velocity: the teacher of distillation (`docs/method.md` §8).

`objective.pretrained = "DIR"` (the latest checkpoint) or `"DIR@STEP"` names the run's workdir;
its own `config.json` says how to build its network, and `objective.pretrained_params` which of
its weights to take ("" for the weights that run evaluates with). Everything that can be wrong
is checked, and named, before anything compiles: the workdir, its config, the checkpoint, that
the run finished (unless a step is given), that it trained on the same data along the same
interpolant (the velocity of another path is not this path's velocity), and the parameter shapes.

A conditional run needs a conditional teacher with as many classes; the loss then guides the
teacher's velocity at each row's label and w (`objectives.GuidedTeacher`, `docs/method.md` §9).
An unconditional run may distil a conditional teacher: it takes the teacher's null-label
velocity, the unconditional model that label dropout trained. Either way a teacher whose null
label was never trained (data.label_dropout = 0) is refused wherever that label is needed.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from flow_maps import checkpoints, config_defaults, networks, objectives, validation
from flow_maps import workdir as workdir_lib
from flow_maps import data as data_lib
from flow_maps.flow_map import FlowMapModel, VelocityField


class Pretrained(NamedTuple):
  model: FlowMapModel
  params: Any  # host arrays
  info: dict  # where it came from: written into the student's run_info.json
  scale: float = 1.0  # the guidance scale a conditional teacher's diagonal at a class learned

  def teacher(self, params: Any) -> VelocityField | objectives.GuidedTeacher:
    """What fills the loss's teacher slot, `params` being these weights on the device: the
    network's velocity field, or for a conditional network a `GuidedTeacher`."""
    if not self.model.num_classes:
      return self.model.bind(params)
    return objectives.GuidedTeacher(self.model, params, self.scale)


def _error(message: str):
  raise validation.ConfigError(f"objective.pretrained: {message}")


def parse(spec: str) -> tuple[str, int | None]:
  """"DIR" -> (DIR, None); "DIR@STEP" -> (DIR, STEP)."""
  if "@" in os.path.basename(spec):
    path, _, step = spec.rpartition("@")
    if not step.isdigit():
      _error(f"{spec!r}: the part after '@' must be a checkpoint step, got {step!r}")
    return path, int(step)
  return spec, None


def load(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]) -> Pretrained:
  """The frozen network of `config.objective.pretrained`; ConfigError naming the problem."""
  spec = config.objective.pretrained
  workdir, step = parse(spec)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    _error(f"{workdir!r} is not a run's workdir (no config.json there)")
  try:
    with open(config_path) as f:
      stored = workdir_lib.upgrade_config(json.load(f))
    # Over today's defaults: a run written before a field existed (one that does not concern
    # its network) is still a usable teacher; everything the run did store is kept as stored.
    teacher_config = config_defaults.common()
    teacher_config.update(stored)
    validation.validate(teacher_config)
  except (ValueError, json.JSONDecodeError) as e:
    _error(f"the config of {workdir!r} is not usable: {e}")
  for field in ("data.name", "interpolant.name", "interpolant.sigma0"):
    section, name = field.split(".")
    ours, theirs = config[section][name], teacher_config[section][name]
    if ours != theirs:
      _error(f"{workdir!r} has {field}={theirs!r}, this run {ours!r}: a teacher must be a flow "
             "of the same data along the same interpolant")
  classes, teacher_classes = data_lib.num_classes(config), data_lib.num_classes(teacher_config)
  if classes and not teacher_classes:
    _error(f"{workdir!r} is an unconditional run: a conditional run (data.conditional=True) "
           "distils a conditional teacher, whose velocity it guides with labels and the null label")
  if classes and teacher_classes != classes:
    _error(f"{workdir!r} has {teacher_classes} classes, this run {classes}: a conditional "
           "teacher must know the same labels")
  if teacher_classes and not teacher_config.data.label_dropout and (
      not classes or config.data.label_dropout or config.guidance.learned):
    _error(f"{workdir!r} never trained its null label (data.label_dropout=0), and this run "
           "needs it: " + ("an unconditional run distils the null-label velocity" if not classes
                           else "rows with a dropped label, and guidance, use it"))
  manager = checkpoints.Checkpoints(workdir, create=False)
  try:
    steps = manager.all_steps()
    if not steps:
      _error(f"no checkpoint in {workdir!r}: train it first")
    if step is None:
      step = max(steps)
      if step < teacher_config.train.num_steps:
        _error(f"the run in {workdir!r} is unfinished (latest checkpoint {step} of "
               f"{teacher_config.train.num_steps} steps); finish it or name a step: "
               f"{workdir}@{step}")
    elif step not in steps:
      _error(f"no checkpoint at step {step} in {workdir!r}; kept: {sorted(steps)}")
    which = config.objective.pretrained_params or teacher_config.eval.params
    choices = validation.params_choices(teacher_config)
    if which not in choices:
      _error(f"objective.pretrained_params={which!r} is not kept by that run; allowed: "
             f"{', '.join(map(repr, choices))}")
    raw = manager.restore_raw(step)
  finally:
    manager.close()
  params = raw["params"] if which == "online" else raw["ema"][choices.index(which) - 1]
  network = networks.build_network(teacher_config, data_shape)
  model = FlowMapModel(network.module)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               np.zeros((1,) + data_shape, np.float32)))
  got = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), params)
  if jax.tree.structure(expected) != jax.tree.structure(got) or any(
      e.shape != g.shape for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got))):
    _error(f"the parameters at step {step} in {workdir!r} do not fit the network its config "
           "describes (shapes differ)")
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  info = {"workdir": os.path.abspath(workdir), "step": int(step), "params": which,
          "model": teacher_config.model.to_dict(), "objective": teacher_config.objective.residual
          if "residual" in teacher_config.objective else None}
  scale = 1.0
  if teacher_classes:
    scale = objectives.conditioning_from_config(teacher_config, teacher_classes).map_scale
    info.update(num_classes=teacher_classes, guidance_scale=scale,
                learned_guidance=model.learns_guidance)
  return Pretrained(model=model, params=params, info=info, scale=scale)
