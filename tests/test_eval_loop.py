"""The training loop's evaluations (`train.train(evaluators=...)`, built by `run.py`): when they
run, the compute each records (time without compilation or evaluation, steps, examples, XLA's
FLOPs) and that it survives a resume; the real evaluator's files, which never overwrite one
another; `--mode=eval` over the latest, every kept or a given checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flow_maps import config_defaults, train, validation
from flow_maps.evaluation import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_tb(logdir, tag):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0})
  acc.Reload()
  if tag in acc.Tags()["images"]:
    return [(e.step, e.width, e.height) for e in acc.Images(tag)]
  return [(e.step, e.value) for e in acc.Scalars(tag)]


def _tc(**fields):
  tc = config_defaults.checkerboard("smoke").train
  tc.update(fields)
  return tc


def test_eval_steps_every_and_log_spaced():
  assert train.eval_steps(_tc(num_steps=20, eval_every=0)) == frozenset()
  # the last step is train_and_eval's, in full
  assert train.eval_steps(_tc(num_steps=20, eval_every=5)) == {5, 10, 15}
  assert train.eval_steps(_tc(num_steps=1000, eval_schedule="log", eval_points=4)) == {
      125, 250, 500, 1000}
  assert train.eval_steps(_tc(num_steps=4, eval_schedule="log", eval_points=5)) == {1, 2, 4}


@pytest.mark.parametrize("field, value, message", [
    ("train.eval_schedule", "linear", "unknown value 'linear'"),
    ("train.eval_points", 0, "train.eval_points"),
    ("train.eval_num_samples", -1, "train.eval_num_samples"),
    ("eval.checkpoint", "newest", "must be 'latest', 'all' or a checkpoint's step"),
])
def test_bad_eval_fields_name_the_field(field, value, message):
  config = config_defaults.checkerboard("smoke")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config)


def test_log_schedule_with_eval_every_is_refused():
  config = config_defaults.checkerboard("smoke")
  config.train.eval_schedule, config.train.eval_every = "log", 5
  with pytest.raises(validation.ConfigError, match="train.eval_every"):
    validation.validate(config)


def test_the_loop_calls_its_evaluators_with_the_compute_so_far_across_a_resume(tmp_path):
  config = config_defaults.checkerboard("smoke")
  config.train.update(num_steps=12, log_every=4, checkpoint_every=4, eval_schedule="log",
                      eval_points=3)
  calls = []

  def evaluator(state, compute):
    calls.append((int(state.step), dict(compute)))
    return {"scalars": {"x": float(state.step)}}

  workdir = str(tmp_path / "run")
  train.train(config, workdir, evaluators=(evaluator,))
  assert [s for s, _ in calls] == [3, 6, 12]
  for step, compute in calls:
    assert compute["step"] == step and compute["examples"] == step * 256
    assert compute["train_flops"] > 0 and compute["train_seconds"] > 0
  flops = [c["train_flops"] / s for s, c in calls]
  assert max(flops) == pytest.approx(min(flops))  # one compiled step's count, times steps
  seconds = [c["train_seconds"] for _, c in calls]
  assert seconds == sorted(seconds)
  assert read_tb(workdir, "eval/x") == [(3, 3.0), (6, 6.0), (12, 12.0)]

  # The resumed run continues the clock from the checkpoint's (the ETA's rate too).
  from flow_maps import checkpoints
  stored = checkpoints.Checkpoints(workdir).stored_metadata(12)["train_seconds"]
  assert stored == pytest.approx(seconds[-1])
  config.train.num_steps = 16  # log points 4, 8, 16: only 16 is still ahead
  calls.clear()
  train.train(config, workdir, evaluators=(evaluator,))
  [(step, compute)] = calls
  assert step == 16 and compute["train_seconds"] > stored
  assert compute["train_flops"] == pytest.approx(16 * flops[0])


def test_without_evaluators_the_loop_evaluates_nothing(tmp_path):
  config = config_defaults.checkerboard("smoke")
  config.train.update(num_steps=2, eval_every=1)
  train.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "eval")


def cli(workdir, *overrides, mode):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  args = [sys.executable, "-m", "flow_maps.main",
          f"--config={ROOT}/configs/checkerboard_lsd.py:smoke", f"--workdir={workdir}",
          f"--mode={mode}", "--config.eval.sampling_steps=(1,2)", "--config.eval.num_samples=1000",
          *overrides]
  return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_eval_results_carry_weights_and_sample_count_and_eval_picks_checkpoints(tmp_path):
  workdir = tmp_path / "run"
  r = cli(workdir, "--config.train.eval_every=10", "--config.train.eval_num_samples=500",
          mode="train_and_eval")
  assert r.returncode == 0, r.stderr[-3000:]
  eval_dir = workdir / "eval"
  names = {f for f in os.listdir(eval_dir) if f.endswith(".json")}
  # the cheap evaluation during training and the full one at the end: nothing overwritten
  assert names == {"step_10_ema_0.9_n500.json", "step_20_ema_0.9_n1000.json"}
  lines = [json.loads(l) for l in open(eval_dir / "metrics.jsonl")]
  assert [(l["step"], l["num_samples"]) for l in lines] == [(10, 500), (20, 1000)]
  assert lines[0]["compute"]["examples"] == 10 * 256 and lines[1]["compute"] is None
  assert set(lines[0]) >= {"kl_n1", "kl_n2", "flow_map_error_n1", "kl_noise_floor"}
  assert [s for s, _ in read_tb(workdir, "eval/kl_n1")] == [10, 20]
  assert [s for s, *_ in read_tb(workdir, "eval/samples")] == [10, 20]

  r = cli(workdir, "--config.eval.checkpoint=all", mode="eval")  # the kept steps: 10, 20
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step_10_ema_0.9_n1000.json" in os.listdir(eval_dir)
  best = json.load(open(eval_dir / results.BEST_FILE))
  [group] = [g for g in best["groups"] if g["num_samples"] == 1000]
  assert best["metric"] == "kl" and group["checkpoints"] == 2 and set(group["best"]) == {"1", "2"}
  before = (eval_dir / "step_10_ema_0.9_n500.json").read_text()

  r = cli(workdir, "--config.eval.checkpoint=10", "--config.eval.params=online", mode="eval")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step_10_online_n1000.json" in os.listdir(eval_dir)
  assert (eval_dir / "step_10_ema_0.9_n500.json").read_text() == before

  r = cli(workdir, "--config.eval.checkpoint=7", mode="eval")
  assert r.returncode == 2 and "no checkpoint of step 7" in r.stderr and "10, 20" in r.stderr
  assert "Traceback" not in r.stderr
