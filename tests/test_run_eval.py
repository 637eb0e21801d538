"""DIR/eval/ (`flow_maps/evaluation/results.py`): one file per (step, weights, sample count),
read back by one scanner; the published protocol's best checkpoint per N (`docs/method.md` §6),
per weights and sample count; the scalars each result logs."""

import json

from flow_maps.evaluation import results


def _write(directory, step, params, scores, metric="fid", num_samples=100):
  with open(directory / f"{results.stem(step, params, num_samples)}.json", "w") as f:
    json.dump({"step": step, "params": params, "num_samples": num_samples, metric: scores}, f)


def _group(table, params, num_samples):
  [group] = [g for g in table["groups"]
             if (g["params"], g["num_samples"]) == (params, num_samples)]
  return group


def test_best_checkpoint_is_chosen_per_step_count_per_params_and_per_sample_count(tmp_path):
  _write(tmp_path, 1000, "ema_0.999", {"1": 9.0, "2": 5.0, "16": 3.0})
  _write(tmp_path, 2000, "ema_0.999", {"1": 8.0, "2": 6.0, "16": 3.5})
  _write(tmp_path, 3000, "online", {"1": 1.0, "2": 1.0, "16": 1.0})  # other weights
  _write(tmp_path, 2000, "ema_0.999", {"1": 0.5}, num_samples=50)  # another count: not mixed
  (tmp_path / "best.json").write_text("{}")  # not an evaluation
  (tmp_path / "metrics.jsonl").write_text("")
  table = results.best(results.scan(str(tmp_path)))
  assert table["metric"] == "fid" and len(table["groups"]) == 3
  best = _group(table, "ema_0.999", 100)
  assert best["checkpoints"] == 2
  assert list(best["best"]) == ["1", "2", "16"]  # numeric order
  assert best["best"]["1"] == {"value": 8.0, "step": 2000}
  assert best["best"]["2"] == {"value": 5.0, "step": 1000}
  assert best["best"]["16"] == {"value": 3.0, "step": 1000}
  assert _group(table, "online", 100)["best"]["1"] == {"value": 1.0, "step": 3000}
  assert _group(table, "ema_0.999", 50)["best"] == {"1": {"value": 0.5, "step": 2000}}
  text = results.format_best(table)
  assert "(step 2000)" in text and "online" not in text  # one checkpoint: nothing to choose


def test_two_dimensional_runs_use_the_kl_and_older_file_names_are_read(tmp_path):
  _write(tmp_path, 10, "ema_0.999", {"1": 0.3, "4": 0.2}, metric="kl")
  with open(tmp_path / "step_20.json", "w") as f:  # written before the sample count was named
    json.dump({"step": 20, "params": "ema_0.999", "num_samples": 100,
               "kl": {"1": 0.25, "4": 0.21}}, f)
  table = results.best(results.scan(str(tmp_path)))
  assert table["metric"] == "kl"
  assert _group(table, "ema_0.999", 100)["best"] == {"1": {"value": 0.25, "step": 20},
                                                     "4": {"value": 0.2, "step": 10}}


def test_latest_is_the_largest_step_then_the_largest_sample_count(tmp_path):
  assert results.latest(str(tmp_path / "none")) is None
  _write(tmp_path, 30, "ema_0.999", {"1": 3.0}, num_samples=10)
  _write(tmp_path, 30, "ema_0.999", {"1": 2.0}, num_samples=1000)
  _write(tmp_path, 4, "ema_0.999", {"1": 1.0}, num_samples=5000)
  latest = results.latest(str(tmp_path))
  assert (latest["step"], latest["num_samples"]) == (30, 1000)


def test_scalars_per_n_and_per_guidance_scale():
  plain = {"kl": {"1": 0.5, "4": 0.25}, "flow_map_error": {"1": 0.1}, "ode_kl": {"16": 0.2},
           "kl_noise_floor": 0.01, "num_samples": 10, "dataset": "checkerboard"}
  assert results.scalars(plain) == {"kl_n1": 0.5, "kl_n4": 0.25, "flow_map_error_n1": 0.1,
                                    "ode_kl_n16": 0.2, "kl_noise_floor": 0.01}
  guided = {"guidance": {"1": {"fid": {"1": 30.0}, "ode_fid": {"8": 20.0}},
                         "3": {"fid": {}, "ode_fid": {"8": 25.0}}},
            "fid": {"1": 30.0}, "fid_floor": None}
  assert results.scalars(guided) == {"fid_n1_w1": 30.0, "ode_fid_n8_w1": 20.0,
                                     "ode_fid_n8_w3": 25.0}


def test_eval_metrics_keep_the_last_line_of_each_evaluation(tmp_path):
  lines = [{"step": 20, "params": "p", "num_samples": 8, "kl_n1": 1.0},
           {"step": 10, "params": "p", "num_samples": 8, "kl_n1": 2.0},
           {"step": 20, "params": "p", "num_samples": 8, "kl_n1": 0.5}]  # evaluated again
  text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3'  # a torn last line
  (tmp_path / results.METRICS_FILE).write_text(text)
  assert [(r["step"], r["kl_n1"]) for r in results.read_metrics(str(tmp_path))] == [
      (10, 2.0), (20, 0.5)]
