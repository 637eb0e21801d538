"""The kill battery: N kill -9s (and SIGTERMs) at seeded moments of a real CLI training run, each
followed by a resume; the resumed run must end bitwise equal to an uninterrupted one.

  python experiments/kill_battery.py --kills=30 --seed=0 --workdir=/tmp/kill_battery

Two runs of the same command (`configs/checkerboard_lsd.py:smoke`, lengthened so that it
checkpoints and logs many times, `checkpoint_every` not a multiple of `log_every`):
  - WORKDIR/reference: never interrupted; it checkpoints every step and keeps them all (the
    cadence changes nothing the run computes), so every state the killed run resumes from has
    an uninterrupted twin to compare with;
  - WORKDIR/killed: started again after every kill, until it finishes.

Each kill is a `Kill(moment, step)` drawn from the seed: the moment (`MOMENTS`) and the step at
or after which it fires. A hooked moment is reached inside the real CLI (`python -m
flow_maps.main`, run through `child` with a few functions wrapped: nothing the run computes is
touched), which there sends itself SIGKILL or SIGTERM, so where it lands is reproducible from
the seed: between steps, mid-way through a metrics line, at every stage of a checkpoint save
(before it, with Orbax's background write in flight, all files written but not renamed,
renamed but without `files.sha256`, while rotation deletes an old checkpoint, while
`files.sha256` is written), and during the resume itself (after the restore, while
metrics.jsonl is rewritten, before the first step). A `timed` kill is a kill -9 from this
process a seeded delay after the run passed its step: where it lands is not reproducible.

After every kill: the exit status (-9 for SIGKILL, 143 for SIGTERM); the next run must resume
from the newest committed checkpoint with no checkpoint error; every checkpoint in the killed
workdir must hold the reference's arrays at that step (the sha256 digests saved with it) and
its open logging window; metrics.jsonl (a torn last line aside) must be a prefix of the
reference's, line for line, timing fields aside. At the end the final state (parameters, EMAs,
optimiser state, step, key), restored from both workdirs, must be bitwise equal, and the two
metrics.jsonl files equal. Before the verdict the comparisons are shown to detect a changed
array and a changed metric.

Prints one summary line with the counts, writes WORKDIR/summary.json and WORKDIR/kills.jsonl,
exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "checkerboard_lsd.py") + ":smoke"
MARK = "kill-battery:"
TIMING_FIELDS = ("steps_per_sec",)

# moment -> (signal the run receives, whether it lands inside a checkpoint save).
MOMENTS = {
    "step": (signal.SIGKILL, False),  # just after step k was dispatched
    "log_torn": (signal.SIGKILL, False),  # half of step k's metrics line written
    "save_begin": (signal.SIGKILL, True),  # Checkpoints.save entered, nothing written yet
    "save_async": (signal.SIGKILL, True),  # Orbax's background write in flight
    "save_precommit": (signal.SIGKILL, True),  # every file written, the tmp dir not renamed
    "save_committed": (signal.SIGKILL, True),  # renamed, before rotation and files.sha256
    "save_delete": (signal.SIGKILL, True),  # half of the oldest checkpoint deleted by rotation
    "save_digest": (signal.SIGKILL, True),  # files.sha256.tmp half written
    "save_done": (signal.SIGKILL, True),  # the save returned, the next step not begun
    "restore": (signal.SIGKILL, False),  # start-up: the checkpoint restored
    "truncate": (signal.SIGKILL, False),  # start-up: metrics.jsonl's rewrite before its rename
    "compile": (signal.SIGKILL, False),  # start-up: before the first step (its compilation)
    "timed": (signal.SIGKILL, None),  # kill -9 from outside, a seeded delay after step k
    "term_step": (signal.SIGTERM, False),  # SIGTERM after step k: the run saves and exits 143
    "term_save": (signal.SIGTERM, True),  # SIGTERM while the save's files are written
    "term_start": (signal.SIGTERM, False),  # SIGTERM at start-up, before training
}
START_UP = ("restore", "truncate", "compile", "term_start")


@dataclasses.dataclass(frozen=True)
class Kill:
  moment: str
  step: int  # fires at the first opportunity at or after this step
  delay: float = 0.0  # `timed` only: seconds after the run passed `step`

  @property
  def signum(self) -> int:
    return MOMENTS[self.moment][0]


def plan(kills: int, seed: int, span: int, moments=tuple(MOMENTS)) -> list[Kill]:
  """`kills` kills at increasing steps in [1, span], their moments cycling through `moments` in
  a seeded order (so that a short battery still sees each kind), all drawn from `seed`."""
  rng = random.Random(seed)
  steps = sorted(rng.sample(range(1, span + 1), kills))
  order: list[str] = []
  out = []
  for step in steps:
    if not order:
      order = list(moments)
      rng.shuffle(order)
    moment = order.pop()
    out.append(Kill(moment, step, round(rng.uniform(0.0, 0.3), 3) if moment == "timed" else 0.0))
  return out


# --------------------------------------------------------------------------- the hooked run


def child(kill: Optional[Kill], argv: list[str]) -> None:
  """`python -m flow_maps.main ARGV` with the moment of `kill` hooked. It reports on stderr each
  restore (`restored K`), save (`saving K`, `saved K`), the arming of a timed kill and the
  moment reached, then sends itself the kill's signal there."""
  import orbax.checkpoint as ocp
  from orbax.checkpoint._src.path import atomicity, deleter
  from flow_maps import checkpoints, train
  from flow_maps import workdir as workdir_lib

  moment = kill.moment if kill else None
  state = {"fired": False, "saving": None}

  def report(text):
    print(f"{MARK} {text}", file=sys.stderr, flush=True)

  def hit(step, what=None):
    if state["fired"]:
      return
    state["fired"] = True
    report(f"{what or moment} at step {step}")
    os.kill(os.getpid(), kill.signum)
    if kill.signum == signal.SIGKILL:
      time.sleep(60)  # delivered asynchronously from another thread; never go on

  def armed_save():  # the save in progress, if this kill is to land in it
    return state["saving"] if moment and moment.startswith(("save_", "term_save")) else None

  restore_or_init = train.restore_or_init

  def restore_hook(exp, manager):
    restored = restore_or_init(exp, manager)
    report(f"restored {int(restored.step)}")
    if moment in ("restore", "term_start"):
      hit(int(restored.step))
    return restored

  truncate_metrics = workdir_lib.truncate_metrics

  def truncate_hook(path, step):
    if moment != "truncate":
      return truncate_metrics(path, step)
    replace = os.replace
    os.replace = lambda src, dst: hit(step)  # the rewrite written and synced, not renamed
    try:
      truncate_metrics(path, step)
    finally:
      os.replace = replace
    hit(step)  # there was no metrics.jsonl to rewrite

  compile_step = train.compile_step

  def compile_step_hook(exp, step_fn, train_state):
    start = int(train_state.step)
    if moment == "compile":
      hit(start)  # start-up: the step is about to be compiled
    compiled = compile_step(exp, step_fn, train_state)
    count = {"step": start}

    def run(train_state, batch):
      out = compiled.run(train_state, batch)
      count["step"] += 1
      if kill and count["step"] >= kill.step:
        if moment in ("step", "term_step"):
          hit(count["step"])
        elif moment == "timed" and not state["fired"]:
          state["fired"] = True
          report(f"armed at step {count['step']}")
      return out

    return dataclasses.replace(compiled, run=run)

  write = train._MetricsLog.write

  def write_hook(self, step, scalars):
    if moment == "log_torn" and step >= kill.step and self.is_chief:
      line = json.dumps({"step": step, **scalars}) + "\n"
      with open(self.path, "a") as f:
        f.write(line[:len(line) // 2])
        f.flush()
        os.fsync(f.fileno())
      hit(step)
    write(self, step, scalars)

  save = checkpoints.Checkpoints.save

  def save_hook(self, step, train_state, extra=None):
    armed = moment is not None and kill.step <= step
    state["saving"] = step if armed else None
    report(f"saving {step}")
    if moment == "save_begin" and armed:
      hit(step)
    save(self, step, train_state, extra)
    state["saving"] = None
    report(f"saved {step}")
    if moment == "save_done" and armed:
      hit(step)

  manager_save = ocp.CheckpointManager.save

  def manager_save_hook(self, *args, **kwargs):
    out = manager_save(self, *args, **kwargs)
    if moment == "save_async" and armed_save() is not None:
      hit(armed_save())
    return out

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize_hook(self, *args, **kwargs):
    step = armed_save()
    if step is not None and moment in ("save_precommit", "term_save"):
      hit(step)
    out = await finalize(self, *args, **kwargs)
    if step is not None and moment == "save_committed":
      hit(step)
    return out

  delete = deleter.PathDeleter.delete

  def delete_hook(self, path, *args, **kwargs):
    step = armed_save()
    if step is not None and moment == "save_delete":
      files = sorted(os.path.join(r, n) for r, _, names in os.walk(str(path)) for n in names)
      for name in files[:len(files) // 2]:  # what a kill mid-way through rmtree leaves
        os.remove(name)
      hit(step)
    return delete(self, path, *args, **kwargs)

  write_files_digest = checkpoints.Checkpoints._write_files_digest

  def write_files_digest_hook(self, step):
    if moment == "save_digest" and armed_save() is not None:
      with open(os.path.join(self.step_dir(step), checkpoints.FILES_DIGEST + ".tmp"), "w") as f:
        f.write('{"default/')
      hit(step)
    return write_files_digest(self, step)

  train.restore_or_init = restore_hook
  workdir_lib.truncate_metrics = truncate_hook
  train.compile_step = compile_step_hook
  train._MetricsLog.write = write_hook
  checkpoints.Checkpoints.save = save_hook
  ocp.CheckpointManager.save = manager_save_hook
  atomicity.AtomicRenameTemporaryPath.finalize = finalize_hook
  deleter.PathDeleter.delete = delete_hook
  checkpoints.Checkpoints._write_files_digest = write_files_digest_hook
  sys.argv = ["flow_maps.main", *argv]
  runpy.run_module("flow_maps.main", run_name="__main__", alter_sys=True)


class Segment:
  """One start of the CLI: its exit status and every line it printed."""

  def __init__(self, argv: list[str], kill: Optional[Kill], env: dict, timeout: float,
               hooked: bool = True):
    spec = json.dumps(dataclasses.asdict(kill)) if kill else "null"
    entry = [os.path.abspath(__file__), "--child", spec] if hooked else ["-m", "flow_maps.main"]
    self.proc = subprocess.Popen([sys.executable, *entry, *argv], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.killed_in_save: Optional[int] = None
    self.out: list[str] = []
    self.err: list[str] = []
    self.armed = threading.Event()
    readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out)),
               threading.Thread(target=self._read, args=(self.proc.stderr, self.err))]
    for r in readers:
      r.start()
    try:
      if kill is not None and kill.moment == "timed":
        if self.armed.wait(timeout):
          time.sleep(kill.delay)
          if self.proc.poll() is None:
            self.killed_in_save = self.saving()
            os.kill(self.proc.pid, signal.SIGKILL)
      self.returncode = self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.returncode = "hang"
      self.proc.wait()
    for r in readers:
      r.join()

  def _read(self, stream, lines):
    for line in stream:
      lines.append(line.rstrip("\n"))
      if line.startswith(f"{MARK} armed"):
        self.armed.set()

  def marks(self, word: str) -> list[str]:
    prefix = f"{MARK} {word}"
    return [l[len(prefix):].strip() for l in list(self.err) if l.startswith(prefix)]

  def saving(self) -> Optional[int]:
    """The step of a save begun and not finished, from the lines printed so far."""
    events = [l.split()[1:3] for l in list(self.err) if l.startswith((f"{MARK} saving",
                                                                        f"{MARK} saved"))]
    return int(events[-1][1]) if events and events[-1][0] == "saving" else None


# --------------------------------------------------------------------------- comparisons


def metrics_records(workdir: str) -> tuple[list[dict], bool]:
  """metrics.jsonl's whole lines, timing fields dropped, and whether a torn last line was there."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return [], False
  with open(path) as f:
    text = f.read()
  lines = text.split("\n")
  torn = bool(lines[-1])  # a last line without its newline: cut by a kill
  records = [json.loads(l) for l in lines[:-1] if l.strip()]
  for r in records:
    for name in TIMING_FIELDS:
      r.pop(name, None)
  return records, torn


def committed_steps(workdir: str) -> list[int]:
  """Steps whose directory Orbax renamed into place (a save in flight has a tmp name)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def run_files(workdir: str) -> list[str]:
  """The workdir's own files (TensorBoard's event files, one per start, aside)."""
  return [n for n in os.listdir(workdir) if not n.startswith("events.out.tfevents")
          and os.path.isfile(os.path.join(workdir, n))]


def stored_metadata(workdir: str, step: int) -> Optional[dict]:
  path = os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA")
  try:
    with open(path) as f:
      return json.load(f).get("custom_metadata")
  except (OSError, ValueError):
    return None


def compare_checkpoint(killed: str, reference: str, step: int) -> Optional[str]:
  """None if the killed run's checkpoint at `step` holds the reference's arrays (their sha256,
  taken from the state when it was saved) and logging window; else what differs."""
  a, b = stored_metadata(killed, step), stored_metadata(reference, step)
  if b is None:
    return f"step {step}: the reference has no checkpoint there"
  if a is None:
    return f"step {step}: no readable metadata"
  arrays_a, arrays_b = a["digest"]["arrays"], b["digest"]["arrays"]
  differ = sorted(p for p in set(arrays_a) | set(arrays_b) if arrays_a.get(p) != arrays_b.get(p))
  if differ:
    return f"step {step}: arrays differ: {', '.join(differ[:4])}"
  if a.get("metrics_window") != b.get("metrics_window"):
    return f"step {step}: the logging window differs"
  return None


def compare_trees(a: Any, b: Any) -> list[str]:
  """Paths of the leaves of two restored checkpoints that are not bitwise equal (dtype, shape
  and bytes; a leaf in one tree only counts as different)."""
  import jax
  import numpy as np
  flat_a = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(a)[0]}
  flat_b = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(b)[0]}
  differ = []
  for path in sorted(set(flat_a) | set(flat_b)):
    x, y = flat_a.get(path), flat_b.get(path)
    if (x is None or y is None or x.dtype != y.dtype or x.shape != y.shape
        or np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes()):
      differ.append(path)
  return differ


def restore_raw(workdir: str, step: int) -> Any:
  from flow_maps import checkpoints
  manager = checkpoints.Checkpoints(workdir, create=False)
  try:
    return manager.restore_raw(step)
  finally:
    manager.close()


def self_check(tree: Any, records: list[dict]) -> list[str]:
  """The comparisons must see a one-ulp change in one array and in one logged value."""
  import jax
  import numpy as np
  problems = []
  leaves, treedef = jax.tree.flatten(tree)
  k = max((i for i, x in enumerate(leaves) if np.issubdtype(np.asarray(x).dtype, np.floating)),
          key=lambda i: np.asarray(leaves[i]).size)
  changed = [np.array(x, copy=True) for x in leaves]
  flat = changed[k].reshape(-1)
  flat[0] = np.nextafter(flat[0], np.inf, dtype=flat.dtype)
  if len(compare_trees(tree, jax.tree.unflatten(treedef, changed))) != 1:
    problems.append("the state comparison missed a one-ulp change")
  if records:
    altered = [dict(r) for r in records]
    altered[-1]["loss"] = float(np.nextafter(altered[-1]["loss"], np.inf))
    if altered == records:
      problems.append("the metrics comparison missed a one-ulp change")
  return problems


# --------------------------------------------------------------------------- the battery


def cli_args(workdir: str, steps: int, log_every: int, checkpoint_every: int,
             keep: int) -> list[str]:
  return [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.train.num_steps={steps}",
          f"--config.train.log_every={log_every}",
          f"--config.train.checkpoint_every={checkpoint_every}",
          f"--config.train.keep_checkpoints={keep}"]


def child_env(workdir: str) -> dict:
  # One device, and a compilation cache shared by every start: a resume then takes seconds, not
  # a compilation (a cached executable is the one a compilation would make).
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
              TF_CPP_MIN_LOG_LEVEL="3",
              JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def run_battery(kills: int, seed: int, workdir: str, *, log_every: int = 3,
                checkpoint_every: int = 5, keep: int = 3, moments=tuple(MOMENTS),
                timeout: float = 600.0, verbose: bool = True) -> dict:
  if checkpoint_every % log_every == 0:
    raise ValueError(f"checkpoint_every={checkpoint_every} is a multiple of log_every="
                     f"{log_every}: the battery needs checkpoints inside a logging window")
  unknown = sorted(set(moments) - set(MOMENTS))
  if unknown:
    raise ValueError(f"unknown moments {unknown}; known: {', '.join(MOMENTS)}")
  say = print if verbose else (lambda *a, **k: None)
  span = 2 * checkpoint_every * kills
  steps = span + 4 * checkpoint_every  # room after the last kill for its save and a rotation
  schedule = plan(kills, seed, span, tuple(moments))
  reference, killed = os.path.join(workdir, "reference"), os.path.join(workdir, "killed")
  for d in (reference, killed):
    if os.path.exists(d):
      raise FileExistsError(f"{d} exists: give the battery a fresh --workdir")
  os.makedirs(workdir, exist_ok=True)
  env = child_env(workdir)
  t0 = time.time()
  say(f"reference: {steps} steps, a checkpoint every step", flush=True)
  ref = Segment(cli_args(reference, steps, log_every, 1, steps + 1), None, env, timeout,
                hooked=False)
  if ref.returncode != 0:
    raise RuntimeError(f"the reference run failed ({ref.returncode}): " + "\n".join(ref.err[-20:]))
  ref_records, _ = metrics_records(reference)
  args = cli_args(killed, steps, log_every, checkpoint_every, keep)

  def check_workdir(record: dict) -> None:
    """Every checkpoint and metrics.jsonl in the killed workdir against the reference's. A step
    directory without its metadata, older than the newest, is what a kill during rotation leaves
    of the checkpoint it was deleting (the next rotation deletes the rest): counted, not
    compared."""
    steps = committed_steps(killed)
    debris = [s for s in steps[:-1] if stored_metadata(killed, s) is None]
    record["half_deleted"] = sorted(set(record.get("half_deleted", [])) | set(debris))
    arrays = [p for s in steps if s not in debris
              and (p := compare_checkpoint(killed, reference, s))]
    records, _ = metrics_records(killed)
    metrics = ([] if records == ref_records[:len(records)] else
               ["metrics.jsonl is not a prefix of the reference's"])
    record["params_equal"] = record.get("params_equal", True) and not arrays
    record["metrics_equal"] = record.get("metrics_equal", True) and not metrics
    record["problems"] += arrays + metrics

  results = []
  for i, kill in enumerate(schedule + [None]):
    started = time.time()
    seg = Segment(args, kill, env, timeout)
    restored = [int(x) for x in seg.marks("restored")]
    if results:  # the resume of the previous kill
      prev = results[-1]
      errors = [l for l in seg.err if "checkpoint error" in l or "falling back" in l
                or "Traceback" in l]
      if not restored:
        prev["problems"].append(f"the next run did not restore (exit {seg.returncode})")
      elif restored[0] != prev["newest_committed"]:
        prev["problems"].append(f"resumed at {restored[0]}, the newest committed checkpoint "
                                f"is {prev['newest_committed']}")
      if errors:
        prev["problems"].append(f"the resume reported: {errors[0]}")
      prev["resumed"] = bool(restored) and restored[0] == prev["newest_committed"] and not errors
      check_workdir(prev)
      say(f"  resumed at {restored[0] if restored else '-'}: "
          f"{'ok' if not prev['problems'] else '; '.join(prev['problems'])}", flush=True)
    if kill is None:
      final = seg
      break
    landed = seg.marks(kill.moment) if kill.moment != "timed" else []
    expected = -kill.signum if kill.signum == signal.SIGKILL else 128 + kill.signum
    record = {"index": i, **dataclasses.asdict(kill),
              "signal": signal.Signals(kill.signum).name, "returncode": seg.returncode,
              "restored": restored[0] if restored else None, "problems": [],
              "seconds": round(time.time() - started, 1)}
    if kill.moment == "timed":
      record["landed_step"] = None
      record["during_save"] = seg.killed_in_save is not None
      injected = seg.returncode == -signal.SIGKILL
    else:
      record["landed_step"] = int(landed[0].split()[-1]) if landed else None
      record["during_save"] = MOMENTS[kill.moment][1] and bool(landed)
      injected = bool(landed)
    record["injected"] = injected and seg.returncode == expected
    if not record["injected"]:
      record["problems"].append(f"not injected: exit {seg.returncode}, expected {expected}; "
                                + " | ".join(seg.err[-3:]))
    if kill.signum == signal.SIGTERM and any("Traceback" in l for l in seg.err):
      record["problems"].append("a traceback after SIGTERM")
    saved = [int(x) for x in seg.marks("saved")]
    record["last_saved"] = saved[-1] if saved else None
    committed = committed_steps(killed)
    record["newest_committed"] = committed[-1] if committed else 0
    if record["last_saved"] is not None and record["newest_committed"] < record["last_saved"]:
      record["problems"].append(f"the save of step {record['last_saved']} returned but the newest "
                                f"committed checkpoint is {record['newest_committed']}")
    check_workdir(record)
    record["torn_line"] = metrics_records(killed)[1]
    results.append(record)
    where = (f"at step {record['landed_step']}" if record["landed_step"] is not None else
             f"{kill.delay:.3f} s after step {kill.step}")
    say(f"kill {i + 1}/{kills}: {kill.moment} ({record['signal']}) {where}: exit "
        f"{seg.returncode}; newest committed {record['newest_committed']}"
        f"{'; a torn metrics line' if record['torn_line'] else ''}"
        f"{'; in a save' if record['during_save'] else ''}", flush=True)

  problems = []
  if final.returncode != 0:
    problems.append(f"the last run failed (exit {final.returncode}): " + " | ".join(final.err[-3:]))
  records, torn = metrics_records(killed)
  metrics_equal = records == ref_records and not torn
  if not metrics_equal:
    problems.append("the final metrics.jsonl differs from the reference's")
  # Rotation has deleted everything but the last `keep` checkpoints (half-deleted ones too),
  # and the run left no file the uninterrupted run does not have.
  cadence = list(range(checkpoint_every, steps, checkpoint_every)) + [steps]
  if committed_steps(killed) != cadence[-keep:]:
    problems.append(f"the checkpoints left are {committed_steps(killed)}, not {cadence[-keep:]}")
  left_over = sorted(set(run_files(killed)) - set(run_files(reference)))
  if left_over:
    problems.append(f"files left over by the kills: {', '.join(left_over)}")
  tree_ref = restore_raw(reference, steps)
  differ = (compare_trees(restore_raw(killed, steps), tree_ref)
            if steps in committed_steps(killed) else ["<no final checkpoint>"])
  if differ:
    problems.append(f"the final state differs: {', '.join(differ[:6])}")
  checks = self_check(tree_ref, ref_records)
  problems += checks

  count = lambda key: sum(1 for r in results if r.get(key))  # noqa: E731
  summary = {
      "seed": seed, "kills": kills, "steps": steps, "log_every": log_every,
      "checkpoint_every": checkpoint_every, "keep_checkpoints": keep,
      "injected": count("injected"),
      "sigkill": sum(1 for r in results if r["injected"] and r["signal"] == "SIGKILL"),
      "sigterm": sum(1 for r in results if r["injected"] and r["signal"] == "SIGTERM"),
      "during_save": sum(1 for r in results if r["injected"] and r["during_save"]),
      "during_start_up": sum(1 for r in results if r["injected"] and r["moment"] in START_UP),
      "timed": sum(1 for r in results if r["injected"] and r["moment"] == "timed"),
      "torn_lines": count("torn_line"),
      "half_deleted": len({s for r in results for s in r.get("half_deleted", [])}),
      "resumed": count("resumed"),
      "params_equal": sum(1 for r in results if r.get("resumed") and r["params_equal"]),
      "metrics_equal": sum(1 for r in results if r.get("resumed") and r["metrics_equal"]),
      "final_state_equal": not differ, "final_metrics_equal": metrics_equal,
      "metrics_lines": len(ref_records), "self_check": not checks,
      "failures": sum(1 for r in results if r["problems"]) + len(problems),
      "problems": problems + [f"kill {r['index'] + 1} ({r['moment']}): {p}" for r in results
                              for p in r["problems"]],
      "seconds": round(time.time() - t0, 1),
  }
  with open(os.path.join(workdir, "kills.jsonl"), "w") as f:
    for r in results:
      f.write(json.dumps(r) + "\n")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def summary_line(s: dict) -> str:
  yes = lambda b: "yes" if b else "NO"  # noqa: E731
  return (f"kill battery (seed {s['seed']}, {s['steps']} steps, checkpoint every "
          f"{s['checkpoint_every']}, log every {s['log_every']}): {s['kills']} kills, "
          f"{s['injected']} injected ({s['sigkill']} SIGKILL, {s['sigterm']} SIGTERM; "
          f"{s['during_save']} during a save, {s['during_start_up']} during start-up, "
          f"{s['timed']} timed; {s['torn_lines']} torn metrics lines, "
          f"{s['half_deleted']} half-deleted checkpoints) / {s['resumed']} resumed "
          f"at the newest committed checkpoint / {s['params_equal']} bitwise-equal params / "
          f"{s['metrics_equal']} metrics-equal; final state bitwise equal: "
          f"{yes(s['final_state_equal'])}; metrics.jsonl equal ({s['metrics_lines']} lines): "
          f"{yes(s['final_metrics_equal'])}; comparison self-check: {yes(s['self_check'])}; "
          f"failures: {s['failures']} ({s['seconds']:.0f} s)")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kills", type=int, required=True, help="how many kills (N >= 1)")
  parser.add_argument("--seed", type=int, default=0, help="draws the kills' moments and steps")
  parser.add_argument("--workdir", required=True, help="a fresh directory for both runs")
  parser.add_argument("--log_every", type=int, default=3)
  parser.add_argument("--checkpoint_every", type=int, default=5,
                      help="not a multiple of --log_every")
  parser.add_argument("--keep_checkpoints", type=int, default=3)
  parser.add_argument("--moments", default=",".join(MOMENTS),
                      help="the moments to draw from, comma-separated")
  args = parser.parse_args(argv)
  if args.kills < 1:
    parser.error("--kills must be >= 1")
  try:
    summary = run_battery(args.kills, args.seed, args.workdir, log_every=args.log_every,
                          checkpoint_every=args.checkpoint_every, keep=args.keep_checkpoints,
                          moments=tuple(m for m in args.moments.split(",") if m))
  except (ValueError, FileExistsError) as e:
    parser.error(str(e))
  for p in summary["problems"]:
    print(f"problem: {p}")
  print(summary_line(summary), flush=True)
  return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
  if len(sys.argv) > 2 and sys.argv[1] == "--child":
    spec = json.loads(sys.argv[2])
    sys.path.insert(0, ROOT)
    child(Kill(**spec) if spec else None, sys.argv[3:])
  else:
    sys.path.insert(0, ROOT)
    sys.exit(main())
