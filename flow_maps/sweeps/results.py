"""Aggregating a sweep (`flow_maps.sweeps`): every member's state, resolved `config.json` and
latest evaluation (`eval/step_<step>_<params>_n<num_samples>.json` of the largest step, of those
the largest sample count; `evaluation/results.py`) into one row, written as `results.csv` and
`results.md` (with a mean ± std over seeds); a member missing, running or failed is listed, never
an error."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

from flow_maps.sweeps.define import CONFIG_KEY, Member, Sweep, varying_keys
from flow_maps.sweeps.runner import read_json


# --------------------------------------------------------------------------- aggregation


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{sep}{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, key, sep))
    else:
      out[key] = v
  return out


def latest_eval(workdir: str) -> Optional[dict]:
  """The evaluation of the largest step (of those, the largest sample count), or None."""
  from flow_maps.evaluation import results  # plain Python: no JAX import here
  return results.latest(os.path.join(workdir, "eval"))


def _natural_key(name: str):
  """Sorts "kl/2" before "kl/16"."""
  return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


@dataclasses.dataclass
class Results:
  rows: list[dict[str, Any]]
  config_columns: list[str]
  metric_columns: list[str]
  problems: list[str]  # one line per member that is missing, running, failed or not evaluated

  @property
  def columns(self) -> list[str]:
    return ["index", "name", "status"] + self.config_columns + ["eval_step", "eval_params"] + \
        self.metric_columns


def member_state(member: Member, root: str) -> tuple[str, Optional[str]]:
  """(status cell, problem line or None) of one member from its workdir."""
  workdir = member.workdir(root)
  where = f"member {member.index} ({member.name})"
  if not os.path.isdir(workdir):
    return "missing", f"{where}: missing (no workdir {workdir})"
  status = read_json(os.path.join(workdir, "status.json"))
  if status is None:
    return "unknown", f"{where}: no status.json (never started by the sweep runner?)"
  state, code = status.get("state"), status.get("returncode")
  if state == "done":
    return "done", None
  if state == "running":
    return "running", (f"{where}: running since {status.get('started')} on {status.get('host')} "
                       "(or died without reporting)")
  return f"{state} ({code})", f"{where}: {state} with exit code {code}; see {workdir}/log.txt"


def collect(sweep: Sweep, root: str) -> Results:
  """One row per member: its state, the config fields that vary across members, and the metrics
  of its latest evaluation (nested dicts flattened: kl/1, kl/2, ..., fid/1, ...)."""
  members = sweep.expand()
  rows, configs, problems = [], [], []
  for member in members:
    workdir = member.workdir(root)
    status, problem = member_state(member, root)
    row: dict[str, Any] = {"index": member.index, "name": member.name, "status": status}
    config = read_json(os.path.join(workdir, "config.json"))
    configs.append(flatten(config) if config else None)
    result = latest_eval(workdir)
    if result is not None:
      result = dict(result)
      row["eval_step"] = result.pop("step", None)
      row["eval_params"] = result.pop("params", None)
      result.pop("figure", None)
      row.update(flatten(result, sep="/"))
    elif problem is None and sweep.mode in ("eval", "train_and_eval"):
      problem = f"member {member.index} ({member.name}): done but no eval/step_*.json in {workdir}"
    if problem:
      problems.append(problem)
    rows.append(row)
  # Config columns: what the sweep varies (known even for members that never ran) and whatever
  # else differs between the resolved configs (objective.residual for a config-file axis, ...).
  declared = [{CONFIG_KEY: m.config + (f":{m.variant}" if m.variant else ""), **m.overrides}
              for m in members]
  config_columns = [k for k in declared[0] if k in varying_keys(declared)]
  present = [c for c in configs if c is not None]
  config_columns += sorted(varying_keys(present) - set(config_columns), key=_natural_key)
  for row, config, known in zip(rows, configs, declared):
    for key in config_columns:
      row[key] = config[key] if config and key in config else known.get(key)
  fixed = {"index", "name", "status", "eval_step", "eval_params"} | set(config_columns)
  # Metrics in the order the evaluation writes them (kl/1, kl/2, ..., kl/16, kl_noise_floor, ...),
  # numbers before text (dataset, sampler names).
  seen: dict[str, bool] = {}
  for row in rows:
    for k, v in row.items():
      if k not in fixed:
        seen[k] = seen.get(k, False) or _numeric(v)
  metric_columns = [k for k, numeric in seen.items() if numeric] + \
      [k for k, numeric in seen.items() if not numeric]
  return Results(rows, config_columns, metric_columns, problems)


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)
    return f"{value:.4g}"
  if isinstance(value, (list, dict)):
    return json.dumps(value)
  return str(value)


def write_csv(results: Results, path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(results.columns)
    for row in results.rows:
      writer.writerow(["" if row.get(c) is None else
                       (json.dumps(row[c]) if isinstance(row[c], (list, dict)) else row[c])
                       for c in results.columns])


def _numeric(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def seed_summary(results: Results, group_out: str = "seed") -> Optional[tuple[list[str], list]]:
  """Mean ± std of every metric over members that differ only in `group_out` (the seed), or None
  if no config column is named so. Returns (header, rows)."""
  if group_out not in results.config_columns:
    return None
  keys = [c for c in results.config_columns if c != group_out]
  groups: dict[tuple, list[dict]] = {}
  for row in results.rows:
    groups.setdefault(tuple(repr(row.get(k)) for k in keys), []).append(row)
  # Integer columns are counts (samples, bins): settings, not metrics.
  metrics = [m for m in results.metric_columns
             if any(isinstance(r.get(m), float) for r in results.rows)]
  if not metrics:
    return None
  header = keys + ["members"] + metrics
  out = []
  for rows in groups.values():
    line = [_cell(rows[0].get(k)) for k in keys]
    done = [r for r in rows if any(_numeric(r.get(m)) for m in metrics)]
    line.append(f"{len(done)}/{len(rows)}")
    for m in metrics:
      values = [float(r[m]) for r in rows if _numeric(r.get(m))]
      if not values:
        line.append("")
      elif len(values) == 1:
        line.append(f"{values[0]:.4g}")
      else:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        line.append(f"{mean:.4g} ± {std:.2g}")
    out.append(line)
  return header, out


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  esc = lambda s: str(s).replace("|", "\\|")
  lines = ["| " + " | ".join(esc(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
  return lines


def to_markdown(results: Results, title: str) -> str:
  lines = [f"# {title}", ""]
  lines += _markdown_table(results.columns,
                           [[_cell(r.get(c)) for c in results.columns] for r in results.rows])
  summary = seed_summary(results)
  if summary:
    lines += ["", "Mean ± standard deviation over seeds (members with results only):", ""]
    lines += _markdown_table(*summary)
  lines += [""]
  if results.problems:
    lines += [f"{len(results.problems)} member(s) without results:", ""]
    lines += [f"- {p}" for p in results.problems]
  else:
    lines += ["Every member is done and evaluated."]
  return "\n".join(lines) + "\n"


def aggregate(sweep: Sweep, root: str) -> Results:
  """Writes `<root>/results.csv` and `<root>/results.md`; never fails on a member's state."""
  results = collect(sweep, root)
  os.makedirs(root, exist_ok=True)
  write_csv(results, os.path.join(root, "results.csv"))
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(to_markdown(results, f"Sweep {sweep.name}: {root}"))
  return results
