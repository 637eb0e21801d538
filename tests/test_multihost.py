"""Multi-host, for real on one machine: two JAX processes of two CPU devices each
(`jax.distributed` on localhost, gloo collectives; `python -m flow_maps.main --distributed` with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID) train what one process of four
devices trains, to round-off (the gradient all-reduce sums in another order across processes:
differences of 1e-8 relative), and a two-process run stopped and resumed is bitwise the
uninterrupted one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [f"--config={ROOT}/configs/checkerboard_lsd.py:smoke", "--config.train.log_every=5",
        "--config.train.checkpoint_every=10"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(workdir, processes: int, devices: int, *extra):
  """The CLI in `processes` processes of `devices` CPU devices each; their results."""
  port = _free_port()
  procs = []
  for i in range(processes):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TF_CPP_MIN_LOG_LEVEL="3")
    args = [sys.executable, "-m", "flow_maps.main", *ARGS, *extra, f"--workdir={workdir}"]
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
      args.append("--distributed")
    procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  out = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, out):
    assert p.returncode == 0, err[-3000:]
  return out


def losses(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def digest(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA")) as f:
    return json.load(f)["custom_metadata"]["digest"]


def test_two_processes_train_what_one_process_of_four_devices_trains(tmp_path):
  one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
  run(one, 1, 4)
  run(two, 2, 2)
  info = json.load(open(two / "run_info.json"))
  assert (info["processes"], info["devices"]) == (2, 4)
  a, b = losses(one), losses(two)
  assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10, 15, 20]
  for ra, rb in zip(a, b):
    for k in ra:
      assert abs(ra[k] - rb[k]) <= 1e-5 * max(abs(ra[k]), 1e-3), (ra["step"], k, ra[k], rb[k])
  run(resumed, 2, 2, "--config.train.num_steps=10")
  run(resumed, 2, 2)  # both processes resume at step 10
  assert losses(resumed) == b
  for step in (10, 20):
    assert digest(resumed, step) == digest(two, step)
