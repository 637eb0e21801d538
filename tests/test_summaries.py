"""TensorBoard scalars without TensorFlow (`flow_maps/summaries.py`): the events read back with
TensorBoard's own reader, and a 2-D training run works with TensorFlow made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_scalars(logdir, tag):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalars_read_back(tmp_path):
  from flow_maps import summaries
  writer = summaries.ScalarWriter(str(tmp_path))
  for step in (3, 6):
    writer.write_scalars(step, {"loss": 1.0 / step, "grad_norm": float(step)})
  writer.close()
  loss = read_scalars(tmp_path, "loss")
  assert [s for s, _ in loss] == [3, 6]
  assert all(abs(v - 1.0 / s) < 1e-7 for s, v in loss)  # stored as float32
  assert read_scalars(tmp_path, "grad_norm") == [(3, 3.0), (6, 6.0)]


def test_training_never_imports_tensorflow(tmp_path):
  """With a `tensorflow` package that raises on import first on the path, a checkerboard run
  trains, logs and checkpoints, and TensorBoard reads its loss; the same run writes its
  parameter table and a profiler trace of the steps asked for."""
  blocker = tmp_path / "block" / "tensorflow"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('tensorflow is blocked in this test')\n")
  env = dict(os.environ, PYTHONPATH=f"{blocker.parent}{os.pathsep}{ROOT}",
             TF_CPP_MIN_LOG_LEVEL="3")
  workdir = tmp_path / "run"
  r = subprocess.run([sys.executable, "-m", "flow_maps.main",
                      f"--config={ROOT}/configs/checkerboard_lsd.py:smoke", f"--workdir={workdir}",
                      "--config.train.log_every=5", "--config.train.profile_start=4",
                      "--config.train.profile_steps=3"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert [s for s, _ in read_scalars(workdir, "loss")] == [5, 10, 15, 20]
  table = (workdir / "parameters.txt").read_text()
  assert "hidden_0/kernel" in table and "Total: 4,610" in table  # the smoke MLP: 2 x 64 on 4 inputs
  traces = [f for _, _, files in os.walk(workdir / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert "profile of steps 4 to 6" in r.stdout


def _png(width=6, height=4):
  import io

  import numpy as np
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def test_png_images_read_back(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from flow_maps import summaries
  writer = summaries.ScalarWriter(str(tmp_path))
  writer.write_png(7, "eval/samples", _png())
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
  acc.Reload()
  [image] = acc.Images("eval/samples")
  assert (image.step, image.width, image.height) == (7, 6, 4)
  assert image.encoded_image_string == _png()


def test_wandb_project_without_wandb_is_refused_by_name(monkeypatch):
  import importlib.util

  import pytest
  from flow_maps import config_defaults, validation
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real(name, *a))
  config = config_defaults.checkerboard("smoke")
  config.train.wandb_project = "flow-maps"
  with pytest.raises(validation.ConfigError,
                     match="train.wandb_project: .* needs the wandb package"):
    validation.validate(config)


def test_wandb_writer_logs_scalars_and_images_to_one_run_per_workdir(tmp_path, monkeypatch):
  """A stand-in `wandb` module records what the writer sends: the same run id for the same
  workdir (a resume continues the run), scalars and images at their steps, and a finish."""
  import types
  from flow_maps import summaries
  calls = []

  class Run:
    def log(self, data, step):
      calls.append(("log", step, data))

    def finish(self):
      calls.append(("finish",))

  def init(**kwargs):
    calls.append(("init", kwargs))
    return Run()

  fake = types.ModuleType("wandb")
  fake.init, fake.Image = init, lambda image: ("image", image.size)
  monkeypatch.setitem(sys.modules, "wandb", fake)
  for _ in range(2):
    writer = summaries.WandbWriter(str(tmp_path), "flow-maps", {"seed": 0})
    writer.write_scalars(3, {"loss": 0.5})
    writer.write_png(3, "eval/samples", _png())
    writer.close()
  inits = [c[1] for c in calls if c[0] == "init"]
  assert inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow"
  assert inits[0]["project"] == "flow-maps" and inits[0]["config"] == {"seed": 0}
  assert ("log", 3, {"loss": 0.5}) in calls
  assert ("log", 3, {"eval/samples": ("image", (6, 4))}) in calls
  assert calls[-1] == ("finish",)
