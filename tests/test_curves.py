"""`experiments/curves.py`: a sweep's evaluations during training as curves against steps,
examples, training seconds and FLOPs, mean ± std over seeds (CSV and PNG), on eval lines written
here in the layout the training loop writes (`evaluation/results.py`)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = '''
from flow_maps import sweeps

def get_sweep(arg=None):
  members = [{"config": f"configs/checkerboard_{o}.py", "seed": s}
             for s in (0, 1) for o in ("lsd", "esd")]
  return sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="smoke", members=members,
                      mode="train", name="fake_curves")
'''


def _curves():
  spec = importlib.util.spec_from_file_location("curves", os.path.join(ROOT, "experiments",
                                                                       "curves.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_run(workdir, scale, seconds_per_step, steps=(10, 20, 40)):
  os.makedirs(os.path.join(workdir, "eval"))
  with open(os.path.join(workdir, "eval", "metrics.jsonl"), "w") as f:
    for step in steps:
      compute = {"step": step, "examples": 8 * step, "train_seconds": seconds_per_step * step,
                 "train_flops": 1e6 * step}
      f.write(json.dumps({"step": step, "params": "online", "num_samples": 100,
                          "compute": compute, "kl_n1": scale / step, "kl_n4": scale / step / 2,
                          "flow_map_error_n1": scale}) + "\n")
    # the final full evaluation of train_and_eval: no compute record, left out
    f.write(json.dumps({"step": steps[-1], "params": "online", "num_samples": 1000,
                        "compute": None, "kl_n1": 123.0}) + "\n")


def test_curves_mean_and_std_over_seeds_per_group_and_axis(tmp_path):
  pytest.importorskip("matplotlib")
  sweep_file = tmp_path / "fake_curves.py"
  sweep_file.write_text(SWEEP)
  root = tmp_path / "root"
  # lsd seeds 0, 1: KL_1 = 10/step and 30/step (mean 20/step, std sqrt(200)/step); esd seed 0 only.
  _write_run(root / "0_checkerboard_lsd-seed=0", 10.0, 0.1)
  _write_run(root / "2_checkerboard_lsd-seed=1", 30.0, 0.3)
  _write_run(root / "1_checkerboard_esd-seed=0", 5.0, 0.2)
  curves = _curves()
  assert curves.main([str(sweep_file), f"--root={root}"]) == 0
  out = root / "curves"
  assert (out / "kl.png").stat().st_size > 0 and (out / "flow_map_error.png").exists()
  assert not (out / "fid.png").exists()  # no FID in these runs
  rows = list(csv.DictReader(open(out / "curves.csv")))
  pick = lambda **k: [r for r in rows if all(r[a] == v for a, v in k.items())]
  [r] = pick(group="checkerboard_lsd", metric="kl", N="1", axis="train_seconds", step="20")
  assert r["seeds"] == "2" and r["evaluation"] == "online n100"
  assert float(r["y_mean"]) == pytest.approx(1.0)
  assert float(r["y_std"]) == pytest.approx(2 ** 0.5 * 10 / 20, rel=1e-5)
  assert float(r["x_mean"]) == pytest.approx(4.0) and float(r["x_std"]) > 0
  [r] = pick(group="checkerboard_esd", metric="kl", N="4", axis="train_flops", step="40")
  assert r["seeds"] == "1" and float(r["y_mean"]) == pytest.approx(5.0 / 40 / 2)
  assert float(r["x_mean"]) == pytest.approx(4e7) and float(r["y_std"]) == 0
  assert {r["axis"] for r in rows} == {"step", "examples", "train_seconds", "train_flops"}
  assert max(float(r["y_mean"]) for r in pick(metric="kl", N="1")) < 100  # the full eval left out


def test_no_run_with_evaluations_is_an_error(tmp_path, capsys):
  sweep_file = tmp_path / "fake_curves.py"
  sweep_file.write_text(SWEEP)
  assert _curves().main([str(sweep_file), f"--root={tmp_path / 'empty'}"]) == 2
  assert "no evaluation with a compute record" in capsys.readouterr().err
