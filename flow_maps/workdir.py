"""The run directory's own files, safe against kills and against a second run.

- `atomic_write`: a temp file in the same directory, fsync, `os.replace`: a kill leaves the old
  file or the new one, never half of one (and the next write deletes the temp file it left).
- `RunLock`: `DIR/.lock` names the host and pid of the run that trains in DIR; a second run is
  refused, and a lock left by a killed run (same host, pid not alive) is replaced.
- `compare_configs` / `record_config_changes`: on resume the stored `DIR/config.json` and the new
  config are compared field by field; fields that change the run's meaning refuse the resume
  unless named in `--allow_config_change`, the others may change; every change is appended to
  `DIR/config_changes.jsonl`.
- `read_metrics` / `truncate_metrics`: `DIR/metrics.jsonl` with a torn last line (a kill mid-write)
  is read without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any, Iterable, Optional

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"

# Field-path prefixes of a config (a prefix ends with "." or is a whole path). Changing one of
# MEANING on resume makes another run: refused unless allowed by name. The MAY_CHANGE ones only
# say how long, how often or how to evaluate. A field under neither counts as MEANING: it is
# refused until someone decides. A field the stored config lacks (added to the code since the run
# started) is accepted, and recorded, when it holds its default of `config_defaults.common()`:
# a new field's default is, by this project's rule, the behaviour the code had before it.
MEANING = ("seed", "data.", "interpolant.", "model.", "objective.", "guidance.", "optim.",
           "train.batch_size", "train.ema_decays")
MAY_CHANGE = ("train.num_steps", "train.log_every", "train.checkpoint_every",
              "train.keep_checkpoints", "train.eval_every", "train.eval_schedule",
              "train.eval_points", "train.eval_num_samples", "train.wandb_project",
              "train.xla_optimization_level",
              "train.profile_start", "train.profile_steps", "eval.", "sample.")
# What eval and sample need to match the checkpoint's run: the data, the network (and the
# interpolant it was trained for) and the parameter sets the checkpoint holds.
SAME_RUN_FOR_EVAL = ("data.", "interpolant.", "model.", "guidance.learned", "train.ema_decays")


class WorkdirError(RuntimeError):
  """The workdir is in use by another run, or one of its files is damaged."""


def _matches(path: str, prefixes: Iterable[str]) -> bool:
  return any(path == p or (p.endswith(".") and path.startswith(p)) for p in prefixes)


def changes_meaning(path: str) -> bool:
  return _matches(path, MEANING) or not _matches(path, MAY_CHANGE)


def atomic_write(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  prefix = f".{os.path.basename(path)}.tmp."
  tmp = os.path.join(directory, f"{prefix}{os.getpid()}")
  _remove_stale_temporaries(directory, prefix)
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _remove_stale_temporaries(directory: str, prefix: str) -> None:
  """Deletes the temp files of `atomic_write` (PREFIX<pid>) left by processes that are gone: a
  kill between the write and the rename leaves one, and every kill would add another."""
  for name in os.listdir(directory):
    pid = name[len(prefix):]
    if name.startswith(prefix) and pid.isdigit() and _pid_start_time(int(pid)) is None:
      try:
        os.remove(os.path.join(directory, name))
      except FileNotFoundError:
        pass  # another process removed it first


# --------------------------------------------------------------------------- the lock


def _pid_start_time(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the
  pid it names one process, even after the pid is reused. None if there is no such process."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return None
    except PermissionError:
      pass
    return "?"  # alive (no /proc): cannot tell a reused pid


class RunLock:
  """`DIR/.lock` held (flock) while a run trains in DIR; its content names host, pid and the
  pid's start time. Acquire with `with RunLock(workdir):`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def __enter__(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    host, pid = socket.gethostname(), os.getpid()
    for _ in range(10):  # the file may be replaced between open and flock; then try again
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = self._read(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise WorkdirError(f"{os.path.dirname(self.path)} is in use by another run: "
                           f"{self._describe(holder)} holds {self.path}") from None
      if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
        break
      os.close(fd)
    else:
      raise WorkdirError(f"cannot take {self.path}: it keeps being replaced")
    holder = self._read(fd)
    if holder:
      same_host = holder.get("host") == host
      start = _pid_start_time(int(holder.get("pid", -1))) if same_host else None
      if not same_host:
        os.close(fd)
        raise WorkdirError(
            f"{os.path.dirname(self.path)} is locked by {self._describe(holder)}, on another "
            f"host: if that run is dead, delete {self.path}")
      if start is not None and start in (holder.get("start"), "?") and holder["pid"] != pid:
        os.close(fd)
        raise WorkdirError(f"{os.path.dirname(self.path)} is in use by another run: "
                           f"{self._describe(holder)} holds {self.path}")
      print(f"note: replacing the stale lock {self.path} of {self._describe(holder)}, which is "
            "no longer running", file=sys.stderr, flush=True)
    content = json.dumps({"host": host, "pid": pid, "start": _pid_start_time(pid),
                          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, content.encode() + b"\n", 0)
    os.fsync(fd)
    self._fd = fd
    return self

  @staticmethod
  def _read(fd: int) -> Optional[dict]:
    try:
      text = os.pread(fd, 4096, 0).decode()
      return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
      return {"host": "?", "pid": -1}  # unreadable: treat as a dead run's

  @staticmethod
  def _describe(holder: Optional[dict]) -> str:
    holder = holder or {}
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"

  def __exit__(self, *exc):
    if self._fd is not None:
      try:
        os.remove(self.path)  # while still holding the flock
      except OSError:
        pass
      os.close(self._fd)
      self._fd = None


# --------------------------------------------------------------------------- the config


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted path: JSON value} of a config's JSON form (lists for tuples)."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def config_as_json(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


# Config fields renamed since runs were written: old name -> new name. A stored config is read
# under today's names, so that an older run resumes, evaluates and teaches as it did.
RENAMED = {"eval.steps": "eval.sampling_steps", "sample.steps": "sample.sampling_steps"}


def upgrade_config(stored: dict) -> dict:
  """A stored config (nested dict) with the fields of `RENAMED` under their new names."""
  out = json.loads(json.dumps(stored))
  for old, new in RENAMED.items():
    section, name = old.split(".")
    if isinstance(out.get(section), dict) and name in out[section]:
      value = out[section].pop(name)
      new_section, new_name = new.split(".")
      out.setdefault(new_section, {}).setdefault(new_name, value)
  return out


def stored_config(workdir: str) -> Optional[dict]:
  """DIR/config.json under today's field names (`RENAMED`), or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return upgrade_config(json.load(f))
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} is unreadable ({e}); it records the run's config: restore it, "
                       "or delete it to resume without the comparison") from None


_ABSENT = "<absent>"


@dataclasses.dataclass(frozen=True)
class Change:
  field: str
  old: Any
  new: Any

  def describe(self) -> str:
    return f"{self.field} {self.old!r} -> {self.new!r}"


def compare_configs(stored: dict, new: dict) -> list[Change]:
  a, b = flatten(stored), flatten(new)
  return [Change(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
          if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def check_allowed_names(allowed: Iterable[str], config) -> None:
  """Every --allow_config_change name must be a field of the config (a misspelling would
  allow nothing, silently)."""
  from flow_maps import cli
  from flow_maps.validation import ConfigError
  for name in allowed:
    message = cli.unknown_field_message(name, config, "--allow_config_change")
    if message:
      raise ConfigError(message.removeprefix("config error: "))


def check_resume(workdir: str, config, allowed: Iterable[str], *, what: str = "resuming",
                 fields: Optional[tuple[str, ...]] = None) -> list[Change]:
  """The changes from the stored config to `config`; raises ConfigError (one line, a diff) if
  one changes the run's meaning (or, with `fields`, lies under those prefixes) and is not in
  `allowed`. Returns [] if there is no stored config."""
  from flow_maps.validation import ConfigError
  stored = stored_config(workdir)
  if stored is None:
    return []
  allowed = set(allowed)
  changes = compare_configs(stored, config_as_json(config))
  added = _added_at_default(changes)
  refuse = [c for c in changes if c.field not in allowed and c not in added and (
      changes_meaning(c.field) if fields is None else _matches(c.field, fields))]
  if refuse:
    raise ConfigError(
        f"{what} {workdir} with a different config: "
        f"{', '.join(c.describe() for c in refuse)}; pass "
        f"--allow_config_change={','.join(c.field for c in refuse)} to override")
  return changes


def _added_at_default(changes: list[Change]) -> list[Change]:
  """The changes that only add a field the stored config lacks, at its common() default."""
  from flow_maps import config_defaults
  defaults = flatten(config_as_json(config_defaults.common()))
  return [c for c in changes if c.old == _ABSENT and c.field in defaults
          and c.new == defaults[c.field]]


def record_config_changes(workdir: str, step: int, changes: list[Change]) -> None:
  """Appends one JSON line per change to DIR/config_changes.jsonl."""
  if not changes:
    return
  added = _added_at_default(changes)
  with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
    for c in changes:
      # "added": a field new to the code, at its default; "allowed": a change of meaning,
      # allowed by --allow_config_change; else "may_change".
      if c in added:
        kind = "added"
      else:
        kind = "allowed" if changes_meaning(c.field) else "may_change"
      f.write(json.dumps({"step": step, "field": c.field, "old": c.old, "new": c.new,
                          "kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    f.flush()
    os.fsync(f.fileno())
  print(f"config changes since the stored config (recorded in {CHANGES_FILE}): "
        f"{', '.join(c.describe() for c in changes)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- metrics.jsonl


def _metrics_lines(path: str) -> list[tuple[dict, str]]:
  """(record, line) for each line of metrics.jsonl; a torn last line (a kill mid-write) is
  dropped, with a note on stderr; a damaged line elsewhere is a WorkdirError naming it."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  out = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not an object with an integer step")
    except ValueError as e:
      if all(not rest.strip() for rest in lines[number:]):
        print(f"note: dropping the torn last line {number} of {path} (a kill mid-write)",
              file=sys.stderr, flush=True)
        break
      raise WorkdirError(f"{path}: line {number} is not a metrics record ({e}); fix or remove "
                         "that line") from None
    out.append((record, line))
  return out


def read_metrics(path: str) -> list[dict]:
  return [record for record, _ in _metrics_lines(path)]


def truncate_metrics(path: str, step: int) -> None:
  """Keeps the lines up to `step` (the checkpoint resumed from), byte for byte: those after it
  will be logged again. Rewritten atomically."""
  if not os.path.exists(path):
    return
  kept = [line + "\n" for record, line in _metrics_lines(path) if record["step"] <= step]
  atomic_write(path, "".join(kept))
