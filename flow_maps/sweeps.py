"""Sweeps: a base config, a list of override sets, one workdir per member, one results table.

A sweep file (see `experiments/sweeps/`) defines `get_sweep(arg=None) -> Sweep`. A member is a
dict of config overrides (`{"seed": 1, "objective.psd_h": "midpoint"}`); the reserved key
`"config"` names another config file for that member (`"configs/checkerboard_esd.py"`). Members
are built with `axis`, `zipped` and `product`:

  product(axis("config", [lsd, esd]), axis("seed", [0, 1, 2]))   # 6 members

Member K runs in `<root>/<K>_<name>`, the name made of the overrides that vary across the sweep,
through the same code path as `python -m flow_maps.main --mode=...` (a subprocess: a crash, a
NaN or a preemption of one member never takes the others down). Its output goes to
`<workdir>/log.txt` and its exit status to `<workdir>/status.json`. Members are independent and
restartable: running a member again resumes it from its last checkpoint (training resumes by
itself), and a member already done with the same command is skipped.

`aggregate` reads every member's resolved `config.json` and its latest evaluation
(`eval/step_<step>_<params>_n<num_samples>.json` of the largest step, of those the largest sample
count; `evaluation/results.py`) into one row per member (`results.csv`, `results.md`), and lists the members that are missing,
running or failed instead of failing.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence

# Relative config paths in a sweep are relative to the project root (where `configs/` lives).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("train", "eval", "sample", "train_and_eval")
CONFIG_KEY = "config"  # the reserved member key naming a config file


# --------------------------------------------------------------------------- building members


def axis(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """One override taking each of `values`: [{key: v} for v in values]."""
  return [{key: v} for v in values]


def zipped(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Several overrides varied together: {"a": [1, 2], "b": [3, 4]} -> [{a: 1, b: 3}, {a: 2, b: 4}]."""
  lengths = {k: len(v) for k, v in columns.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zipped: columns of different lengths {lengths}")
  n = next(iter(lengths.values()), 0)
  return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def product(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Every combination of one entry per axis, merged, the last axis varying fastest.

  Each axis is a list of override dicts (from `axis`, `zipped`, or written out); a key set by two
  axes is an error.
  """
  members: list[dict[str, Any]] = [{}]
  for ax in axes:
    merged = []
    for left in members:
      for right in ax:
        clash = set(left) & set(right)
        if clash:
          raise ValueError(f"product: key(s) {sorted(clash)} set by more than one axis")
        merged.append({**left, **right})
    members = merged
  return members


# --------------------------------------------------------------------------- the sweep


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: a config file (with variant) and its overrides."""

  index: int
  name: str
  config: str  # path as written in the sweep (relative to the project root or absolute)
  variant: str
  overrides: dict[str, Any]  # every override, the sweep's common ones included

  @property
  def config_path(self) -> str:
    return resolve_path(self.config)

  @property
  def config_arg(self) -> str:
    return self.config_path + (f":{self.variant}" if self.variant else "")

  def workdir(self, root: str) -> str:
    return os.path.join(root, f"{self.index}_{self.name}")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A base config and a list of members (override dicts), run in one mode.

  config:    the base config file, relative to the project root (or absolute);
  variant:   the config variant for every member ("", "demo", "smoke");
  members:   override dicts, one per member; the key "config" replaces the config file;
  overrides: applied to every member before its own (not part of the member names);
  mode:      what each member runs: train | eval | sample | train_and_eval;
  name:      the sweep's name (defaults to the sweep file's name).
  """

  config: str
  members: Sequence[Mapping[str, Any]]
  variant: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  mode: str = "train_and_eval"
  name: str = ""

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"sweep mode: unknown {self.mode!r}; allowed: {MODES}")
    if not self.members:
      raise ValueError("a sweep needs at least one member")
    if CONFIG_KEY in self.overrides:
      raise ValueError(f"sweep overrides: use the sweep's `config` field, not {CONFIG_KEY!r}")

  def expand(self) -> list[Member]:
    """The members, numbered from 0, each named by the overrides that vary across the sweep."""
    full = []
    for m in self.members:
      m = dict(m)
      m.setdefault(CONFIG_KEY, self.config)
      full.append(m)
    varying = varying_keys(full)
    out = []
    for index, m in enumerate(full):
      name = member_name({k: v for k, v in m.items() if k in varying})
      config = m.pop(CONFIG_KEY)
      out.append(Member(index=index, name=name or "base", config=config, variant=self.variant,
                        overrides={**self.overrides, **m}))
    names = [x.name for x in out]
    if len(set(names)) != len(names):
      raise ValueError(f"sweep members are not distinct: {names}")
    return out


def varying_keys(members: Sequence[Mapping[str, Any]]) -> set[str]:
  """The keys whose value is not the same in every member (a key absent somewhere varies)."""
  keys = set().union(*members) if members else set()
  missing = object()
  return {k for k in keys if len({repr(m.get(k, missing)) for m in members}) > 1}


def _name_part(key: str, value: Any) -> str:
  if key == CONFIG_KEY:
    return os.path.splitext(os.path.basename(str(value)))[0]
  return f"{key.rsplit('.', 1)[-1]}={value}"


def member_name(overrides: Mapping[str, Any]) -> str:
  """A directory-safe name from overrides, in their order:
  {"config": "configs/checkerboard_esd.py", "seed": 1} -> "checkerboard_esd-seed=1"."""
  parts = [_name_part(k, v) for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def resolve_path(path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(PROJECT_ROOT, path)


def load_sweep(spec: str) -> Sweep:
  """`path/to/sweep.py[:arg]` -> the Sweep its `get_sweep(arg)` returns."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"sweep file not found: {path}")
  module_name = "_sweep_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise AttributeError(f"{path} defines no get_sweep(arg=None)")
  sweep = module.get_sweep(arg or None)
  if not sweep.name:
    stem = os.path.splitext(os.path.basename(path))[0]
    sweep = dataclasses.replace(sweep, name=stem + (f"_{arg}" if arg else ""))
  return sweep


# --------------------------------------------------------------------------- running one member


def format_override(key: str, value: Any) -> str:
  """`--config.<key>=<value>` as ml_collections' config flags parse it back."""
  if isinstance(value, str):
    text = value
  elif isinstance(value, (list, tuple)):
    text = "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  else:
    text = repr(value)
  return f"--config.{key}={text}"


def command(member: Member, root: str, mode: str, extra_flags: Sequence[str] = ()) -> list[str]:
  """The command line that runs a member: the project's own entry point."""
  return ([sys.executable, "-m", "flow_maps.main", f"--config={member.config_arg}",
           f"--workdir={member.workdir(root)}", f"--mode={mode}"]
          + [format_override(k, v) for k, v in member.overrides.items()] + list(extra_flags))


def process_id() -> Optional[int]:
  """This host's index in a multi-host run, from the launcher's environment, or None."""
  for var in ("JAX_PROCESS_ID", "SLURM_PROCID", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID"):
    if os.environ.get(var, "").isdigit():
      return int(os.environ[var])
  return None


def _log_name(distributed: bool) -> tuple[str, bool]:
  """(log file name, whether this host writes status.json). One host: log.txt. Several: host 0
  writes log.txt and the status, host K log.workerK.txt; if the launcher does not say which host
  this is, every host logs to log.<hostname>.txt and writes the (identical) status."""
  host = process_id() if distributed else 0
  if host is None:
    return f"log.{socket.gethostname()}.txt", True
  return ("log.txt", True) if host == 0 else (f"log.worker{host}.txt", False)


def read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, data: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, path)  # atomic: a reader never sees half a status


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def is_done(member: Member, root: str, cmd: Sequence[str]) -> bool:
  """True if the member already finished with exit code 0 running this very command (the
  interpreter's path aside: hosts may keep their environments in different places)."""
  status = read_json(os.path.join(member.workdir(root), "status.json"))
  return bool(status and status.get("state") == "done"
              and (status.get("command") or [None])[1:] == list(cmd)[1:])


def run_member(member: Member, root: str, mode: str, extra_flags: Sequence[str] = (),
               force: bool = False, echo: bool = False) -> int:
  """Runs one member in a subprocess and returns its exit code.

  Output goes to `<workdir>/log.txt` (appended, one header per attempt), the state to
  `<workdir>/status.json` ("running", then "done" or "failed" with the exit code). A member that
  is done with the same command is skipped (exit 0) unless `force`. SIGTERM and SIGINT are passed
  on to the run, which checkpoints and exits 128 + signal; that code is returned. On a multi-host
  launch host 0 writes the status and host K logs to `log.worker<K>.txt` (see `_log_name`).
  """
  workdir = member.workdir(root)
  cmd = command(member, root, mode, extra_flags)
  if not os.path.exists(member.config_path):
    print(f"member {member.index} ({member.name}): config file not found: {member.config_path}",
          file=sys.stderr, flush=True)
    return 2
  if not force and is_done(member, root, cmd):
    print(f"member {member.index} ({member.name}) is already done; skipping "
          "(--force runs it again)", flush=True)
    return 0
  os.makedirs(workdir, exist_ok=True)
  log_name, chief = _log_name("--distributed" in extra_flags)
  log_path = os.path.join(workdir, log_name)
  status_path = os.path.join(workdir, "status.json")
  previous = read_json(status_path) or {}
  status = {"index": member.index, "name": member.name, "config": member.config_arg,
            "overrides": member.overrides, "mode": mode, "command": cmd, "state": "running",
            "returncode": None, "host": socket.gethostname(),
            "attempts": int(previous.get("attempts", 0)) + 1, "started": _now(),
            "finished": None}
  if chief:
    _write_json(status_path, status)
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  with open(log_path, "a") as log:
    log.write(f"\n=== {_now()} attempt {status['attempts']} on {status['host']}: "
              f"{' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    forwarded = []

    def forward(signum, frame):
      del frame
      forwarded.append(signum)
      proc.send_signal(signum)

    handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      code = proc.wait()
    finally:
      for sig, handler in handlers.items():
        signal.signal(sig, handler)
  if code < 0:  # killed by a signal without handling it
    code = 128 - code
  status.update(state="done" if code == 0 else "failed", returncode=code, finished=_now())
  if forwarded and code:
    status["state"] = "stopped"
  if chief:
    _write_json(status_path, status)
  if echo or code:
    print(f"member {member.index} ({member.name}): {status['state']}, exit code {code}; "
          f"log: {log_path}", flush=True)
  return code


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
