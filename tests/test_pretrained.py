"""A finished run as the frozen teacher of distillation (`flow_maps/pretrained.py`): loaded with
its own network from its own config.json, its weights exactly those of its checkpoint, and every
way it can be wrong a named one-line error before anything compiles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import chex
import numpy as np
import pytest

from flow_maps import checkpoints, config_defaults, pretrained, train, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(config, workdir, *overrides, mode="train"):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="3")
  args = [sys.executable, "-m", "flow_maps.main", f"--config={ROOT}/configs/{config}.py:smoke",
          f"--workdir={workdir}", f"--mode={mode}", *overrides]
  return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A finished flow-matching smoke run (20 steps, checkpoints at 10 and 20)."""
  workdir = tmp_path_factory.mktemp("teacher")
  r = _cli("checkerboard_flow_matching", workdir)
  assert r.returncode == 0, r.stderr
  return workdir


def _student(spec: str, preset: str = "lmd", **objective):
  c = config_defaults.with_preset(config_defaults.checkerboard("smoke"), preset)
  c.objective.pretrained = spec
  c.objective.update(objective)
  return c


def test_loads_the_runs_own_network_and_weights(teacher):
  loaded = pretrained.load(_student(str(teacher)), (2,))
  assert loaded.info["step"] == 20 and loaded.info["params"] == "ema_0.9"  # its eval.params
  cfg = config_defaults.with_preset(config_defaults.checkerboard("smoke"), "flow_matching")
  state = checkpoints.Checkpoints(str(teacher)).restore(
      train.init_state(train.build_experiment(cfg)))
  chex.assert_trees_all_equal(loaded.params, state.ema[0])  # the same tree, leaf by leaf
  online = pretrained.load(_student(f"{teacher}@10", pretrained_params="online"), (2,))
  assert online.info["step"] == 10
  state10 = checkpoints.Checkpoints(str(teacher)).restore(
      train.init_state(train.build_experiment(cfg)), 10)
  chex.assert_trees_all_equal(online.params, state10.params)  # the same tree, leaf by leaf


def test_a_teacher_written_before_a_field_existed_loads(teacher, tmp_path):
  """A run whose config.json lacks a field added since (here objective.dropout) is a usable
  teacher: the missing field takes today's default, everything stored is kept."""
  def drop(c):
    del c["objective"]["dropout"]
  old = _copy_with(teacher, tmp_path, drop)
  assert "dropout" not in json.loads((old / "config.json").read_text())["objective"]
  loaded = pretrained.load(_student(str(old)), (2,))
  reference = pretrained.load(_student(str(teacher)), (2,))
  chex.assert_trees_all_equal(loaded.params, reference.params)  # the same tree, leaf by leaf


def _copy_with(teacher, tmp_path, edit):
  """A copy of the teacher's workdir with its config.json edited."""
  copy = tmp_path / "copy"
  shutil.copytree(teacher, copy)
  path = copy / "config.json"
  config = json.loads(path.read_text())
  edit(config)
  path.write_text(json.dumps(config))
  return copy


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a run's workdir (no config.json there)"),
    ("no checkpoint", "no checkpoint in"),
    ("unfinished", "is unfinished (latest checkpoint 20 of 40 steps); finish it or name a step"),
    ("step", "no checkpoint at step 5 in"),
    ("weights", "objective.pretrained_params='ema_0.5' is not kept by that run; allowed: "
                "'online', 'ema_0.9'"),
    ("other data", "has data.name='gaussian_mixture', this run 'checkerboard': a teacher must be"),
    ("other interpolant", "has interpolant.name='trigonometric', this run 'linear'"),
    ("shapes", "do not fit the network its config describes (shapes differ)"),
    ("bad step", "the part after '@' must be a checkpoint step"),
])
def test_every_bad_teacher_is_a_named_error(case, message, teacher, tmp_path):
  spec, objective = str(teacher), {}
  if case == "missing":
    spec = str(tmp_path / "nowhere")
  elif case == "no checkpoint":
    (tmp_path / "empty").mkdir()
    shutil.copy(teacher / "config.json", tmp_path / "empty" / "config.json")
    spec = str(tmp_path / "empty")
  elif case == "unfinished":
    spec = str(_copy_with(teacher, tmp_path, lambda c: c["train"].update(num_steps=40)))
  elif case == "step":
    spec = f"{teacher}@5"
  elif case == "weights":
    objective = {"pretrained_params": "ema_0.5"}
  elif case == "other data":
    spec = str(_copy_with(teacher, tmp_path, lambda c: c["data"].update(
        name="gaussian_mixture", num_components=8, radius=1.0, std=0.1)))
  elif case == "other interpolant":
    spec = str(_copy_with(teacher, tmp_path, lambda c: c["interpolant"].update(
        name="trigonometric")))
  elif case == "shapes":
    spec = str(_copy_with(teacher, tmp_path, lambda c: c["model"].update(width=32)))
  elif case == "bad step":
    spec = f"{teacher}@last"
  with pytest.raises(validation.ConfigError, match="^objective.pretrained: .*" +
                     message.replace("(", r"\(").replace(")", r"\)").replace("'", "'")):
    pretrained.load(_student(spec, **objective), (2,))


def test_distillation_through_the_cli(teacher, tmp_path):
  """A distillation run trains from the teacher and records it; a bad teacher stops the run with
  exit 2, one line, no traceback and no checkpoint."""
  good = tmp_path / "good"
  r = _cli("checkerboard_lmd", good, f"--config.objective.pretrained={teacher}")
  assert r.returncode == 0, r.stderr
  info = json.loads((good / "run_info.json").read_text())
  assert info["pretrained"]["workdir"] == str(teacher) and info["pretrained"]["step"] == 20
  bad = tmp_path / "bad"
  r = _cli("checkerboard_lmd", bad, f"--config.objective.pretrained={tmp_path / 'nowhere'}")
  assert r.returncode == 2
  assert "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("config error: objective.pretrained: ")
  assert not (bad / "checkpoints").exists()


# --- a conditional teacher (`docs/method.md` §9) ------------------------------------------------


@pytest.fixture(scope="module")
def conditional_teacher(tmp_path_factory):
  """A finished class-conditional flow-matching smoke run on the labelled ring (8 classes)."""
  workdir = tmp_path_factory.mktemp("conditional_teacher")
  r = _cli("gaussian_mixture_flow_matching_guided", workdir)
  assert r.returncode == 0, r.stderr
  return workdir


def _guided_student(spec: str):
  import importlib
  c = importlib.import_module("configs.gaussian_mixture_lmd_guided").get_config("smoke")
  c.objective.pretrained = spec
  return c


def _unconditional_ring_student(spec: str):
  """LMD on the labelled ring's data without labels."""
  c = config_defaults.with_preset(config_defaults.gaussian_mixture("smoke"), "lmd")
  c.data.std, c.interpolant.sigma0 = 0.25, 0.75
  c.objective.pretrained = spec
  return c


@pytest.mark.parametrize("case, message", [
    ("unconditional teacher", "is an unconditional run: a conditional run (data.conditional=True) "
                              "distils a conditional teacher"),
    ("classes", "has 4 classes, this run 8: a conditional teacher must know the same labels"),
    ("no null label", "never trained its null label (data.label_dropout=0), and this run needs "
                      "it: an unconditional run distils the null-label velocity"),
    ("no null label, guided", "never trained its null label (data.label_dropout=0), and this run "
                              "needs it: rows with a dropped label, and guidance, use it"),
])
def test_every_bad_conditional_teacher_is_a_named_error(case, message, teacher, tmp_path):
  """Checked from the teacher's config.json alone, before its checkpoint is read."""
  ring = dict(name="gaussian_mixture", num_components=8, radius=1.0, std=0.25)
  data = {"unconditional teacher": {},
          "classes": dict(conditional=True, label_dropout=0.1, num_components=4)}.get(
              case, dict(conditional=True, label_dropout=0.0))
  def edit(c):
    c["data"].update({**ring, **data})
    c["interpolant"]["sigma0"] = 0.75  # the labelled ring's

  spec = str(_copy_with(teacher, tmp_path, edit))
  if case == "no null label":
    student = _unconditional_ring_student(spec)
  else:
    student = _guided_student(spec)
  with pytest.raises(validation.ConfigError, match="^objective.pretrained: .*" +
                     message.replace("(", r"\(").replace(")", r"\)")):
    pretrained.load(student, (2,))


def test_a_conditional_teacher_guides_a_student_and_serves_an_unconditional_one(
    conditional_teacher):
  """For a conditional student the teacher slot is a GuidedTeacher; an unconditional student of
  the same data takes the teacher's null-label velocity."""
  from flow_maps import flow_map as fm
  from flow_maps import objectives
  loaded = pretrained.load(_guided_student(str(conditional_teacher)), (2,))
  assert loaded.info["num_classes"] == 8 and loaded.info["learned_guidance"] is False
  assert loaded.scale == 1.0
  teacher = loaded.teacher(loaded.params)
  assert isinstance(teacher, objectives.GuidedTeacher)
  plain = _unconditional_ring_student(str(conditional_teacher))
  unconditional = pretrained.load(plain, (2,)).teacher(loaded.params)
  x = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
  t = np.linspace(0.1, 0.9, 6).astype(np.float32)
  null = loaded.model.bind(loaded.params, condition=loaded.model.null_condition(6))
  np.testing.assert_array_equal(np.asarray(unconditional.field(None)(t, t, x)),
                                np.asarray(null(t, t, x)))
  label = np.arange(6) % 8
  b_c = loaded.model.bind(loaded.params, condition=fm.Condition(label))(t, t, x)
  w = np.asarray([0.0, 1.0, 2.0, 3.0, 4.0, 0.5], np.float32)
  guided = teacher.field(fm.Condition(label, w))(t, t, x)
  np.testing.assert_allclose(guided, null(t, t, x) + w[:, None] * (b_c - null(t, t, x)),
                             rtol=1e-5, atol=1e-6)
  assert float(np.max(np.abs(np.asarray(b_c) - np.asarray(null(t, t, x))))) > 1e-3


@pytest.mark.slow
def test_guided_distillation_through_the_cli(conditional_teacher, tmp_path):
  """A guided LMD student of the conditional teacher trains and is evaluated per w through the
  CLI; the teacher is recorded in run_info.json."""
  student = tmp_path / "student"
  r = _cli("gaussian_mixture_lmd_guided", student,
           f"--config.objective.pretrained={conditional_teacher}", "--config.eval.sampling_steps=(1,2)",
           "--config.eval.guidance=(0.0,4.0)", "--config.eval.ode_steps=()",
           "--config.eval.num_samples=500", "--config.eval.batch_size=500",
           mode="train_and_eval")
  assert r.returncode == 0, r.stderr
  info = json.loads((student / "run_info.json").read_text())
  assert info["pretrained"]["num_classes"] == 8
  from flow_maps.evaluation import results
  result = results.latest(str(student / "eval"))
  assert result["step"] == 20
  for w in ("0", "4"):
    errors = result["guidance"][w]["flow_map_error"]
    assert set(errors) == {"1", "2"} and all(np.isfinite(e) for e in errors.values())
