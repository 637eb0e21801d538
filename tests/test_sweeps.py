"""The sweep runner: members and their names, running a real member and resuming it, and the
aggregate over members that are done, failed or missing."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from flow_maps import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "sweep.py")


def sweep_cli(sweep_file, root, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, SCRIPT, str(sweep_file), f"--root={root}", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


# --- members ------------------------------------------------------------------------------------


def test_product_zip_and_names():
  objectives = sweeps.zipped({"objective.name": ["lsd", "psd"],
                              "objective.psd_h": ["uniform", "midpoint"]})
  members = sweeps.product(objectives, sweeps.axis("seed", [0, 1, 2]))
  assert len(members) == 6
  assert members[1] == {"objective.name": "lsd", "objective.psd_h": "uniform", "seed": 1}
  assert members[3] == {"objective.name": "psd", "objective.psd_h": "midpoint", "seed": 0}
  sweep = sweeps.Sweep(config="configs/checkerboard_lsd.py", members=members,
                       overrides={"train.num_steps": 10})
  expanded = sweep.expand()
  assert [m.index for m in expanded] == list(range(6))
  assert expanded[3].name == "name=psd-psd_h=midpoint-seed=0"
  assert expanded[3].overrides == {"train.num_steps": 10, **members[3]}  # common: not in names
  assert expanded[3].workdir("/r") == "/r/3_name=psd-psd_h=midpoint-seed=0"
  with pytest.raises(ValueError, match="more than one axis"):
    sweeps.product(sweeps.axis("seed", [0]), sweeps.axis("seed", [1]))
  with pytest.raises(ValueError, match="different lengths"):
    sweeps.zipped({"a": [1, 2], "b": [1]})
  with pytest.raises(ValueError, match="not distinct"):
    sweeps.Sweep(config="c.py", members=[{"seed": 0}, {"seed": 0}]).expand()


def test_config_axis_names_and_constant_keys():
  """A config-file axis names members by the file's stem; keys equal in every member are left
  out of the names."""
  members = sweeps.product(sweeps.axis("config", ["configs/a_lsd.py", "configs/a_esd.py"]),
                           [{"train.batch_size": 64}], sweeps.axis("seed", [3]))
  expanded = sweeps.Sweep(config="configs/a_lsd.py", members=members, variant="smoke").expand()
  assert [m.name for m in expanded] == ["a_lsd", "a_esd"]
  assert expanded[1].config_arg == os.path.join(ROOT, "configs", "a_esd.py") + ":smoke"
  assert expanded[1].overrides == {"train.batch_size": 64, "seed": 3}


def test_override_flags_round_trip():
  assert sweeps.format_override("seed", 3) == "--config.seed=3"
  assert sweeps.format_override("objective.name", "psd") == "--config.objective.name=psd"
  assert sweeps.format_override("eval.sampling_steps", (1, 4)) == "--config.eval.sampling_steps=(1,4)"
  assert sweeps.format_override("train.ema_decays", (0.9,)) == "--config.train.ema_decays=(0.9,)"
  assert sweeps.format_override("model.learn_weight", True) == "--config.model.learn_weight=True"


def test_shipped_sweeps_list_even_with_missing_configs():
  """The reproduction sweep is objectives x seeds over existing configs; the image sweep lists
  (and flags) config files that do not exist yet instead of failing."""
  cb = sweeps.load_sweep(os.path.join(ROOT, "experiments/sweeps/checkerboard_reproduction.py"))
  members = cb.expand()
  assert len(members) == 15
  assert {m.overrides["seed"] for m in members} == {0, 1, 2}
  assert all(os.path.exists(m.config_path) for m in members)
  assert members[0].name == "checkerboard_lsd-seed=0"
  result = sweep_cli(os.path.join(ROOT, "experiments/sweeps/images.py:celeba"), "/nonexistent",
                     "list")
  assert result.returncode == 0, result.stderr
  assert "celeba_psd_m-seed=2" in result.stdout
  if not os.path.exists(os.path.join(ROOT, "configs", "celeba_lsd.py")):
    assert "do not exist (yet)" in result.stdout


# --- running a member ---------------------------------------------------------------------------


SWEEP_FILE = """
from flow_maps import sweeps

def get_sweep(arg=None):
  return sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="smoke",
                      members=sweeps.axis("seed", [0, 1]),
                      overrides={{"train.num_steps": int(arg or 4), "train.log_every": 2,
                                  "train.checkpoint_every": 2}},
                      mode="{mode}")
"""


def test_run_member_then_resume(tmp_path):
  """`run --index` trains a real member in its own workdir through flow_maps.main; running it
  again with more steps resumes from its checkpoint; unchanged and done, it is skipped."""
  sweep_file = tmp_path / "tiny.py"
  sweep_file.write_text(SWEEP_FILE.format(mode="train"))
  root = tmp_path / "root"
  first = sweep_cli(sweep_file, root, "run", "--index=1")
  assert first.returncode == 0, first.stdout + first.stderr
  workdir = root / "1_seed=1"
  status = json.loads((workdir / "status.json").read_text())
  assert status["state"] == "done" and status["returncode"] == 0 and status["attempts"] == 1
  assert json.loads((workdir / "config.json").read_text())["seed"] == 1
  assert "starting step 0 of 4" in (workdir / "log.txt").read_text()

  again = sweep_cli(f"{sweep_file}:6", root, "run", "--index=1")
  assert again.returncode == 0, again.stdout + again.stderr
  log = (workdir / "log.txt").read_text()
  assert "resuming at step 4 of 6" in log
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4, 6]
  assert json.loads((workdir / "status.json").read_text())["attempts"] == 2

  skipped = sweep_cli(f"{sweep_file}:6", root, "run", "--index=1")
  assert skipped.returncode == 0 and "already done" in skipped.stdout
  assert not (root / "0_seed=0").exists()
  out_of_range = sweep_cli(sweep_file, root, "run", "--index=2")
  assert out_of_range.returncode == 2 and "out of range" in out_of_range.stderr


def test_failed_member_records_exit_code(tmp_path):
  """A member whose run fails (here a config error, exit code 2) is recorded as failed."""
  sweep = sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="smoke", mode="train",
                       members=[{"objective.residual": "lsdd"}])
  member = sweep.expand()[0]
  code = sweeps.run_member(member, str(tmp_path), sweep.mode)
  assert code == 2
  status = json.loads(open(os.path.join(member.workdir(str(tmp_path)), "status.json")).read())
  assert status["state"] == "failed" and status["returncode"] == 2
  assert "objective.residual" in open(os.path.join(member.workdir(str(tmp_path)), "log.txt")).read()


# --- aggregation --------------------------------------------------------------------------------


def _fake_member(workdir, *, state, returncode, config=None, evals=()):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "status.json"), "w") as f:
    json.dump({"state": state, "returncode": returncode, "started": "then", "host": "h"}, f)
  if config is not None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config, f)
  for result in evals:
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    name = (f"step_{result['step']}_ema_0.9_n{result['num_samples']}.json"
            if "num_samples" in result else f"step_{result['step']}.json")  # an older run's
    with open(os.path.join(workdir, "eval", name), "w") as f:
      json.dump(result, f)


def _eval(step, scale, num_samples=None):
  result = {"step": step, "params": "ema_0.9", "objective": "lsd",
            "kl": {str(n): scale / n for n in (1, 2, 16)}, "kl_noise_floor": 0.001,
            "flow_map_error": {"1": scale, "2": scale / 2, "16": scale / 3},
            "ode_kl": {"16": 0.5 * scale}}
  if num_samples is not None:
    result["num_samples"] = num_samples
  return result


def test_aggregate_reports_missing_and_failed(tmp_path):
  members = sweeps.product(sweeps.axis("config", ["configs/checkerboard_lsd.py",
                                                  "configs/checkerboard_esd.py"]),
                           sweeps.axis("seed", [0, 1]))
  sweep = sweeps.Sweep(config="configs/checkerboard_lsd.py", members=members, name="fake")
  expanded = sweep.expand()
  root = str(tmp_path)
  config = lambda seed, name: {"seed": seed, "objective": {"name": name, "psd_h": "uniform"}}
  # Member 0: evaluations at two steps, the latest (step 20) with two sample counts: the
  # larger count's is reported.
  _fake_member(expanded[0].workdir(root), state="done", returncode=0, config=config(0, "lsd"),
               evals=[_eval(10, 9.0, 500), _eval(20, 7.0, 500), _eval(20, 1.0, 4000)])
  _fake_member(expanded[1].workdir(root), state="done", returncode=0, config=config(1, "lsd"),
               evals=[_eval(20, 3.0)])
  _fake_member(expanded[2].workdir(root), state="failed", returncode=1, config=config(0, "esd"))
  # Member 3 never ran.
  results = sweeps.aggregate(sweep, root)

  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
  header = list(rows[0])
  for column in ("status", "config", "seed", "objective.name", "eval_step", "eval_params",
                 "kl/1", "kl/2", "kl/16", "kl_noise_floor", "flow_map_error/16", "ode_kl/16"):
    assert column in header, column
  assert header.index("kl/2") < header.index("kl/16")  # natural order of step counts
  assert "objective.psd_h" not in header  # the same in every member
  assert rows[0]["eval_step"] == "20" and float(rows[0]["kl/2"]) == 0.5
  assert float(rows[1]["kl/1"]) == 3.0
  assert rows[2]["status"] == "failed (1)" and rows[2]["kl/1"] == ""
  assert rows[2]["objective.name"] == "esd"
  assert rows[3]["status"] == "missing" and rows[3]["seed"] == "1"
  assert len(results.problems) == 2
  assert "member 2" in results.problems[0] and "exit code 1" in results.problems[0]
  assert "member 3" in results.problems[1] and "missing" in results.problems[1]

  markdown = (tmp_path / "results.md").read_text()
  header_line = markdown.splitlines()[2]
  assert header_line.startswith("| index | name | status |") and "| kl/1 |" in header_line
  assert "2 member(s) without results" in markdown
  assert "2 ± 1.4" in markdown  # kl/1 over seeds 0 and 1 of LSD: mean 2, std sqrt(2)


def test_aggregate_cli_on_empty_root(tmp_path):
  result = sweep_cli(os.path.join(ROOT, "experiments/sweeps/checkerboard_reproduction.py"),
                     tmp_path, "aggregate")
  assert result.returncode == 0, result.stderr
  assert "15 member(s) without results" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "results.csv").read_text().count("\n") == 16


def test_recipe_stages_pin_what_they_compare():
  """experiments/sweeps/recipe.py: every stage expands; the demo as it was pins the triangle law
  (the demo's default moved to the uniform gap), the sCM preset's members keep the preset's own
  time law and diagonal fraction; an unknown stage is refused by name."""
  recipe = "experiments/sweeps/recipe.py"
  spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, recipe))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for stage in module.STAGES:
    members = sweeps.load_sweep(f"{os.path.join(ROOT, recipe)}:{stage}").expand()
    for m in members:
      if stage.startswith("preset"):
        assert m.config.endswith("checkerboard_consistency_training.py")
        assert "objective.times" not in m.overrides
        assert "objective.diagonal_fraction" not in m.overrides
      else:
        assert m.overrides["objective.times"] in ("triangle", "uniform_gap", "long_gap", "dyadic")
  before = sweeps.load_sweep(f"{os.path.join(ROOT, recipe)}:before").expand()
  assert {m.overrides["objective.times"] for m in before} == {"triangle"}
  with pytest.raises(ValueError, match="unknown stage"):
    sweeps.load_sweep(f"{os.path.join(ROOT, recipe)}:nope")
