"""Multi-host, for real on one machine: two JAX processes of two CPU devices each
(`jax.distributed` on localhost, gloo collectives; `python -m flow_maps.main --distributed` with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID) train what one process of four
devices trains, to round-off (the gradient all-reduce sums in another order across processes:
differences of 1e-8 relative); a two-process run stopped and resumed is bitwise the
uninterrupted one; SIGTERM to one of the two processes stops both at the same step, saved, with
exit code 143, and resuming is bitwise the uninterrupted run; and image evaluation (sampling and
FID, data-parallel) in two processes gives one process's numbers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import test_eval_parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [f"--config={ROOT}/configs/checkerboard_lsd.py:smoke", "--config.train.log_every=5",
        "--config.train.checkpoint_every=10", "--config.train.num_steps=40"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(workdir, processes: int, devices: int, *extra, args=None):
  """`args` (default: the CLI on `workdir`) in `processes` processes of `devices` CPU devices
  each, started; the Popen objects."""
  port = _free_port()
  procs = []
  for i in range(processes):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TF_CPP_MIN_LOG_LEVEL="3")
    command = args or [sys.executable, "-m", "flow_maps.main", *ARGS, *extra,
                       f"--workdir={workdir}"]
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
      command = command + ["--distributed"] if args is None else command
    procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs, code: int = 0):
  """(stdout, stderr) of each process, once all have exited with `code`."""
  out = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, out):
    assert p.returncode == code, err[-3000:]
  return out


def run(workdir, processes: int, devices: int, *extra):
  """The CLI in `processes` processes of `devices` CPU devices each; their results."""
  return finish(start(workdir, processes, devices, *extra))


def losses(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def digest(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA")) as f:
    return json.load(f)["custom_metadata"]["digest"]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
  """The uninterrupted two-process run the tests below compare with."""
  workdir = tmp_path_factory.mktemp("two")
  run(workdir, 2, 2)
  return workdir


def test_two_processes_train_what_one_process_of_four_devices_trains(tmp_path, two):
  one, resumed = tmp_path / "one", tmp_path / "resumed"
  run(one, 1, 4)
  info = json.load(open(two / "run_info.json"))
  assert (info["processes"], info["devices"]) == (2, 4)
  a, b = losses(one), losses(two)
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(5, 45, 5))
  for ra, rb in zip(a, b):
    for k in ra:
      assert abs(ra[k] - rb[k]) <= 1e-5 * max(abs(ra[k]), 1e-3), (ra["step"], k, ra[k], rb[k])
  run(resumed, 2, 2, "--config.train.num_steps=10")
  run(resumed, 2, 2)  # both processes resume at step 10
  assert losses(resumed) == b
  for step in (30, 40):  # the checkpoints kept (train.keep_checkpoints = 3)
    assert digest(resumed, step) == digest(two, step)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, two):
  """SIGTERM to process 1 only, once training runs (the first line of metrics.jsonl): both
  processes agree at the next sync point, save that step and exit 143; resuming gives the
  uninterrupted run bitwise."""
  workdir, uninterrupted = tmp_path / "preempted", two
  procs = start(workdir, 2, 2)
  metrics, deadline = workdir / "metrics.jsonl", time.time() + 600
  while not (metrics.exists() and metrics.read_text().strip()):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, finish(procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  out = finish(procs, code=128 + signal.SIGTERM)
  saved = [int(s) for s in re.findall(r"saved a checkpoint at step (\d+)", out[0][0])]
  assert len(saved) == 1 and saved[0] < 40, out[0]  # the signal came before the end
  for i, (stdout, _) in enumerate(out):  # every process agreed on that step
    assert f"process {i}: stopping at step {saved[0]}, signal 15 reached process(es) [1]" in \
        stdout, stdout
  assert os.path.isdir(workdir / "checkpoints" / str(saved[0]))
  run(workdir, 2, 2)
  assert losses(workdir) == losses(uninterrupted)
  assert digest(workdir, 40) == digest(uninterrupted, 40)


@pytest.mark.slow  # sampling compiles in 3 processes: a few minutes of a loaded 2-core CPU
def test_two_processes_evaluate_what_one_process_evaluates(tmp_path):
  """FIDs (flow map, consistency, conditional; padded sample count) of 2 processes x 2 devices
  equal those of 1 process x 4 devices to round-off, on both processes."""
  script = [sys.executable, test_eval_parallel.__file__]
  one = test_eval_parallel.evaluation_numbers(tmp_path / "one", {"EVAL_FULL_MESH_ONLY": "1"})
  out = finish(start(None, 2, 2, args=script + [str(tmp_path / "two")]))
  two = [[json.loads(l[len(test_eval_parallel.MARK):]) for l in stdout.splitlines()
          if l.startswith(test_eval_parallel.MARK)] for stdout, _ in out]
  assert len(one) == len(two[0]) == len(two[1]) == 3
  for a, b0, b1 in zip(one, *two):
    assert (a["run"], a["devices"], a["processes"]) == (b0["run"], 4, 1)
    assert (b0["processes"], b0["devices"]) == (2, 4)
    assert b0 == b1  # the same numbers on both processes
    test_eval_parallel.assert_same_numbers(b0, a)


def test_a_gs_workdir_stays_a_url():
  """Path-correctness only (no bucket here): a gs:// workdir is not made into a local path."""
  from flow_maps import checkpoints
  path = checkpoints.workdir_path("gs://bucket/runs/a")
  assert os.fspath(path / "checkpoints" / "10") == "gs://bucket/runs/a/checkpoints/10"
  assert os.fspath(checkpoints.workdir_path("runs/a")) == os.path.abspath("runs/a")
