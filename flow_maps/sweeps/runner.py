"""Running one member of a sweep (`flow_maps.sweeps`): its command line (the project's own entry
point), a subprocess with its log and `status.json`, signals passed on, a member already done
skipped."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Optional, Sequence

from flow_maps.sweeps.define import Member


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
    proc = subprocess.Popen(cmd, cwd=member.base_dir, env=env, stdout=log,
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
