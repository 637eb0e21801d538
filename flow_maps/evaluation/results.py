"""The evaluation results of a run directory: their file names, the one scanner that reads them
back, the best checkpoint per N, and the scalars they log. Pure Python (no JAX): the sweep and
curve tools read runs with it.

DIR/eval/ holds, per evaluation (a checkpoint's step, its weights, the sample count):
  - step_<step>_<params>_n<num_samples>.json (and .png for 2-D data): the result; an evaluation
    with other weights or another sample count writes another file, so nothing is overwritten
    (runs written before this layout have step_<step>.json, still read);
  - metrics.jsonl: one line per evaluation, {"step", "params", "num_samples", "compute", and the
    scalars of `scalars`}, in the order they ran (a re-evaluation appends a new line; readers
    keep the last line of each (step, params, num_samples));
  - best.json: the best checkpoint per N, per weights and sample count (`best`).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Optional

BEST_FILE = "best.json"
METRICS_FILE = "metrics.jsonl"
_NAME = re.compile(r"step_(\d+)(?:_(.+)_n(\d+))?\.json")
# Per-N results that become scalars: 2-D KL, flow-map error (and their ODE baselines), images' FID.
PER_N = ("kl", "flow_map_error", "class_fraction", "fid", "ode_kl", "ode_flow_map_error",
         "ode_class_fraction", "ode_fid")


def stem(step: int, params: str, num_samples: int) -> str:
  """The file name, without extension, of one evaluation."""
  return f"step_{step}_{params}_n{num_samples}"


def scan(eval_dir: str) -> list[dict[str, Any]]:
  """Every evaluation result in `eval_dir` (unreadable files skipped), sorted by step, each the
  stored JSON with "num_samples" and "params" filled from the file name where the JSON lacks
  them."""
  results = []
  if not os.path.isdir(eval_dir):
    return results
  for name in os.listdir(eval_dir):
    m = _NAME.fullmatch(name)
    if not m:
      continue
    try:
      with open(os.path.join(eval_dir, name)) as f:
        result = json.load(f)
    except (OSError, ValueError):
      continue
    if m.group(2) is not None:
      result.setdefault("params", m.group(2))
      result.setdefault("num_samples", int(m.group(3)))
    result.setdefault("step", int(m.group(1)))
    results.append(result)
  return sorted(results, key=lambda r: (r["step"], str(r.get("params")), r.get("num_samples") or 0))


def latest(eval_dir: str) -> Optional[dict]:
  """The result of the largest step (of those, the largest sample count), or None."""
  results = scan(eval_dir)
  if not results:
    return None
  return max(results, key=lambda r: (r["step"], r.get("num_samples") or 0))


def metric_of(results: list[dict]) -> str:
  if any("fid" in r for r in results):
    return "fid"
  return "kl" if any("kl" in r for r in results) else "flow_map_error"  # d-D mixture: no KL


def best(results: list[dict]) -> dict:
  """The published protocol (`docs/method.md` §6): for each weights and sample count, and each
  number of steps N, the lowest score ("fid" for images, "kl" for 2-D, "flow_map_error" for the
  d-D mixture) over the checkpoints.

  Returns {"metric", "groups": [{"params", "num_samples", "checkpoints": count,
  "best": {N: {"value", "step"}}}]}, groups sorted by weights then sample count.
  """
  metric = metric_of(results)
  groups: dict[tuple, list[dict]] = {}
  for r in results:
    groups.setdefault((str(r.get("params")), r.get("num_samples") or 0), []).append(r)
  out = []
  for (params, num_samples), rs in sorted(groups.items()):
    per_n: dict[str, dict] = {}
    for r in rs:
      for n, value in (r.get(metric) or {}).items():
        if n not in per_n or value < per_n[n]["value"]:
          per_n[n] = {"value": value, "step": r["step"]}
    out.append({"params": params, "num_samples": num_samples, "checkpoints": len(rs),
                "best": dict(sorted(per_n.items(), key=lambda item: int(item[0])))})
  return {"metric": metric, "groups": out}


def format_best(table: dict) -> str:
  lines = []
  for g in table["groups"]:
    if g["checkpoints"] < 2:
      continue
    lines.append(f"best checkpoint per N over {g['checkpoints']} evaluated ({g['params']} weights, "
                 f"{g['num_samples']} samples; the published protocol, docs/method.md §6):")
    lines += [f"{n:>4}  {b['value']:>10.4g}  (step {b['step']})" for n, b in g["best"].items()]
  return "\n".join(lines)


def _number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def scalars(result: dict) -> dict[str, float]:
  """The scalars of one result for TensorBoard and DIR/eval/metrics.jsonl: "<metric>_n<N>"
  (e.g. kl_n1, fid_n4), per guidance scale "<metric>_n<N>_w<w>", and the noise floors."""
  out = {}
  rows = {"": result}
  if isinstance(result.get("guidance"), dict):  # the w = 1 copy at the top level is skipped
    rows = {f"_w{w}": row for w, row in result["guidance"].items()}
  for suffix, row in rows.items():
    for name in PER_N:
      for n, value in (row.get(name) or {}).items():
        if _number(value):
          out[f"{name}_n{n}{suffix}"] = float(value)
  for name in ("kl_noise_floor", "fid_floor"):
    if _number(result.get(name)):
      out[name] = float(result[name])
  return out


def read_metrics(eval_dir: str) -> list[dict]:
  """DIR/eval/metrics.jsonl, the last line of each (step, params, num_samples), in step order;
  a torn line (a kill mid-write) is skipped."""
  path = os.path.join(eval_dir, METRICS_FILE)
  records: dict[tuple, dict] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except ValueError:
          continue
        records[(r.get("step"), r.get("params"), r.get("num_samples"))] = r
  return sorted(records.values(), key=lambda r: (r.get("step") or 0))
