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
