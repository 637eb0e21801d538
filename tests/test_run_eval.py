"""`run_eval.best_per_step_count`: the published protocol's best checkpoint per N (`docs/method.md` §6),
on eval JSONs written here."""

import json

from flow_maps.evaluation import run_eval


def _write(directory, step, params, scores, metric="fid"):
  with open(directory / f"step_{step}.json", "w") as f:
    json.dump({"step": step, "params": params, metric: scores}, f)


def test_best_checkpoint_is_chosen_per_step_count_and_per_params(tmp_path):
  _write(tmp_path, 1000, "ema_0.999", {"1": 9.0, "2": 5.0, "16": 3.0})
  _write(tmp_path, 2000, "ema_0.999", {"1": 8.0, "2": 6.0, "16": 3.5})
  _write(tmp_path, 3000, "online", {"1": 1.0, "2": 1.0, "16": 1.0})  # other weights: ignored
  (tmp_path / "best.json").write_text("{}")  # not an evaluation
  best = run_eval.best_per_step_count(str(tmp_path), "ema_0.999")
  assert best["metric"] == "fid" and best["checkpoints"] == 2
  assert list(best["best"]) == ["1", "2", "16"]  # numeric order
  assert best["best"]["1"] == {"value": 8.0, "step": 2000}
  assert best["best"]["2"] == {"value": 5.0, "step": 1000}
  assert best["best"]["16"] == {"value": 3.0, "step": 1000}
  assert "(step 2000)" in run_eval.format_best(best)


def test_two_dimensional_runs_use_the_kl(tmp_path):
  _write(tmp_path, 10, "ema_0.999", {"1": 0.3, "4": 0.2}, metric="kl")
  _write(tmp_path, 20, "ema_0.999", {"1": 0.25, "4": 0.21}, metric="kl")
  best = run_eval.best_per_step_count(str(tmp_path), "ema_0.999")
  assert best["metric"] == "kl"
  assert best["best"] == {"1": {"value": 0.25, "step": 20}, "4": {"value": 0.2, "step": 10}}
