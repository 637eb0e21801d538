"""The kill battery (`experiments/kill_battery.py`): kill -9s and SIGTERMs at seeded moments of a
real CLI run, each resumed, ending bitwise equal to an uninterrupted run; and the comparisons it
rests on, shown to fail on a one-ulp change."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flow_maps import workdir as workdir_lib
from test_robustness import TRAIN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "experiments", "kill_battery.py")
_spec = importlib.util.spec_from_file_location("kill_battery", ENGINE)
kill_battery = importlib.util.module_from_spec(_spec)
sys.modules["kill_battery"] = kill_battery  # dataclasses look their module up while it executes
_spec.loader.exec_module(kill_battery)


def test_the_plan_is_drawn_from_the_seed():
  a = kill_battery.plan(16, seed=3, span=160)
  assert a == kill_battery.plan(16, seed=3, span=160)
  assert a != kill_battery.plan(16, seed=4, span=160)
  steps = [k.step for k in a]
  assert steps == sorted(set(steps)) and 1 <= steps[0] and steps[-1] <= 160
  # As many kills as moments: each moment once, in a seeded order.
  assert sorted(k.moment for k in a) == sorted(kill_battery.MOMENTS)
  assert all(k.delay == 0 for k in a if k.moment != "timed")


def test_the_comparisons_see_a_one_ulp_change(tmp_path):
  tree = {"params": {"w": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)},
          "step": np.int32(7)}
  assert kill_battery.compare_trees(tree, tree) == []
  w = tree["params"]["w"].copy()
  w[1, 2] = np.nextafter(w[1, 2], np.float32(2))
  assert kill_battery.compare_trees(tree, {**tree, "params": {"w": w}}) == ["['params']['w']"]
  assert kill_battery.compare_trees(tree, {**tree, "step": np.int64(7)}) == ["['step']"]
  assert kill_battery.self_check(tree, [{"step": 3, "loss": 0.5}]) == []
  # Checkpoint metadata: the arrays' sha256 and the open logging window.
  for name, sha, window in (("a", "00", [1.0]), ("b", "00", [1.0]), ("c", "01", [1.0]),
                            ("d", "00", [1.5])):
    step_dir = tmp_path / name / "checkpoints" / "5"
    step_dir.mkdir(parents=True)
    (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps({"custom_metadata": {
        "digest": {"arrays": {"['params']": {"sha256": sha}}},
        "metrics_window": {"loss": window}}}))
  assert kill_battery.compare_checkpoint(str(tmp_path / "a"), str(tmp_path / "b"), 5) is None
  assert "arrays differ: ['params']" in kill_battery.compare_checkpoint(
      str(tmp_path / "c"), str(tmp_path / "a"), 5)
  assert "window differs" in kill_battery.compare_checkpoint(
      str(tmp_path / "d"), str(tmp_path / "a"), 5)
  # metrics.jsonl: timing fields aside, a torn last line seen and left out.
  (tmp_path / "a" / "metrics.jsonl").write_text(
      '{"step": 3, "loss": 0.5, "steps_per_sec": 9.0}\n{"step": 6, "lo')
  assert kill_battery.metrics_records(str(tmp_path / "a")) == ([{"step": 3, "loss": 0.5}], True)


def test_a_kill_between_write_and_rename_leaves_no_temp_file_behind(tmp_path):
  """Found by the battery (a kill while metrics.jsonl was rewritten on resume): each such kill
  left a `.metrics.jsonl.tmp.<pid>` for good. The next write now deletes those of dead pids."""
  dead = subprocess.Popen(["true"])
  dead.wait()
  path = tmp_path / "metrics.jsonl"
  stale = tmp_path / f".metrics.jsonl.tmp.{dead.pid}"
  live = tmp_path / f".metrics.jsonl.tmp.{os.getppid()}"  # a writer still running: kept
  other = tmp_path / f".config.json.tmp.{dead.pid}"  # another file's: not this write's business
  for p in (stale, live, other):
    p.write_text("half")
  workdir_lib.atomic_write(str(path), "{}\n")
  assert path.read_text() == "{}\n"
  assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.slow
def test_kills_at_seeded_moments_resume_bitwise(tmp_path):
  """Three kills: one inside a save (every file written, not yet renamed), a SIGTERM, and one
  while the resume rewrites metrics.jsonl; every count must be full."""
  moments = "save_precommit,term_step,truncate"
  r = subprocess.run([sys.executable, ENGINE, "--kills=3", "--seed=0", f"--workdir={tmp_path}",
                      f"--moments={moments}"], cwd=ROOT, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  kills = [json.loads(l) for l in open(tmp_path / "kills.jsonl")]
  assert sorted(k["moment"] for k in kills) == sorted(moments.split(","))
  assert [k["signal"] for k in kills].count("SIGTERM") == 1
  assert all(k["returncode"] == (143 if k["signal"] == "SIGTERM" else -9) for k in kills)
  assert (summary["injected"], summary["resumed"], summary["params_equal"],
          summary["metrics_equal"]) == (3, 3, 3, 3)
  assert (summary["sigkill"], summary["sigterm"], summary["during_save"],
          summary["during_start_up"]) == (2, 1, 1, 1)
  assert summary["final_state_equal"] and summary["final_metrics_equal"]
  assert summary["self_check"] and summary["failures"] == 0 and summary["problems"] == []
  steps = summary["steps"]
  assert summary["metrics_lines"] == len(set(range(3, steps + 1, 3)) | {steps})
  assert kill_battery.summary_line(summary) in r.stdout


# --------------------------------------------------------------------------- failing background saves

# The real CLI with a fault inside Orbax's background thread at the save of step 14: the commit
# (every file written, the rename fails as on a full disk) or the rotation that deletes the
# oldest checkpoint after the commit (permission denied).
BACKGROUND_FAULT_MAIN = """
import runpy, sys
from orbax.checkpoint._src.path import atomicity, deleter
fault = sys.argv[1]
finalize, delete = atomicity.AtomicRenameTemporaryPath.finalize, deleter.PathDeleter.delete
async def failing_finalize(self, *args, **kwargs):
  if fault == "commit" and self.get_final().name == "14":
    raise OSError(28, "No space left on device")
  return await finalize(self, *args, **kwargs)
def failing_delete(self, path, *args, **kwargs):
  if fault == "rotation":
    raise PermissionError(13, "Permission denied", str(path))
  return delete(self, path, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = failing_finalize
deleter.PathDeleter.delete = failing_delete
sys.argv = ["flow_maps.main"] + sys.argv[2:]
runpy.run_module("flow_maps.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("fault", ["commit", pytest.param("rotation", marks=pytest.mark.slow)])
def test_a_save_failing_in_orbax_background_thread_stops_the_run(tmp_path, fault):
  workdir = tmp_path / "run"
  train = [*TRAIN, "--config.train.keep_checkpoints=1", f"--workdir={workdir}"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-c", BACKGROUND_FAULT_MAIN, fault, *train], env=env,
                     cwd=ROOT, capture_output=True, text=True, timeout=300)  # no hang
  assert r.returncode == 1, r.stderr
  assert "Traceback" not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("CheckpointSaveError: cannot save the checkpoint at step 14"), last
  assert [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")] == [3, 6, 9, 12]
  assert not (workdir / ".lock").exists()
  if fault == "commit":
    assert "No space left on device" in last
    assert last.endswith("the last committed checkpoint is untouched")
    assert kill_battery.committed_steps(str(workdir)) == [7]
  else:  # deleting step 7 failed after step 14 was committed: the message says so
    assert "Permission denied" in last
    assert last.endswith("step 14 itself was committed (a restore verifies its arrays)")
    assert kill_battery.committed_steps(str(workdir)) == [7, 14]


# --------------------------------------------------------------------------- several processes


@pytest.mark.slow
def test_two_processes_fall_back_past_a_corrupt_checkpoint_together(tmp_path):
  """Process 0 moves a corrupt checkpoint aside; every process must then see the same steps.
  Before the barrier and reload, process 1 kept listing the moved step 20, so its Orbax skipped
  the next save of step 20 (not after its latest) while process 0 waited for it in that save."""
  from test_multihost import digest, run as run_processes
  from test_robustness import data_files, flip_a_byte
  run_processes(tmp_path, 2, 2, "--config.train.num_steps=20")
  flip_a_byte(data_files(tmp_path / "checkpoints" / "20")[-1])
  out = run_processes(tmp_path, 2, 2, "--config.train.num_steps=30")
  for _, err in out:
    assert "falling back to the newest intact checkpoint, step 10" in err, err[-2000:]
  assert kill_battery.committed_steps(str(tmp_path)) == [10, 20, 30]
  # Steps 11 to 20 trained again, bit for bit: the digest saved with the original step 20.
  with open(tmp_path / "corrupt_checkpoints" / "20" / "_CHECKPOINT_METADATA") as f:
    assert json.load(f)["custom_metadata"]["digest"] == digest(tmp_path, 20)
