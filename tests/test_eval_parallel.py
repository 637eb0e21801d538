"""Image evaluation data-parallel over devices (`flow_maps/evaluation/image_eval.py`): the FID of
a sample set on a mesh of 4 CPU devices equals the FID on a mesh of 1 to round-off, given the
same noise, for a sample count that does not divide into the devices (padded, the padding
dropped), for the flow map, the consistency sampler (per-row re-noising), Heun, and a
conditional model (labels sharded with their samples).

The run is this file as a script in a subprocess with 4 CPU devices (`evaluation_numbers`);
`tests/test_multihost.py` runs it in two processes of two devices each as well. The script also
checks that `train.make_mesh` (`jax.make_mesh`) keeps `jax.devices()`' order. The model is the
velocity field is a closed form (of the label and w when conditional) rather than the UNet, and
the Inception network is stood in for by a fixed random projection of the pixels: what is
tested is the data-parallel path (noise by global index, sharded sampling and features,
padding, the merge of statistics), which does not depend on the networks, and each UNet or
Inception compilation takes minutes on this shared CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "EVAL_NUMBERS "
# 18 samples: 3 calls of 6 rows on 1 device; of 8 rows (2 per device, 6 of them padding) on 4.
NUM_SAMPLES, BATCH = 18, 6


def evaluation_numbers(workdir, env: dict | None = None, devices: int = 4) -> list[dict]:
  """Runs this file in a subprocess of `devices` CPU devices; the script's result lines."""
  environ = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                 TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  return [json.loads(line[len(MARK):]) for line in
          _check(subprocess.run([sys.executable, os.path.abspath(__file__), str(workdir)],
                                env=environ, cwd=ROOT, capture_output=True, text=True,
                                timeout=900)).stdout.splitlines() if line.startswith(MARK)]


def _check(r):
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def assert_same_numbers(a: dict, b: dict, rtol: float = 1e-6) -> None:
  """Equal FIDs (every N, every sampler, every w) to round-off, and the same bookkeeping."""
  flat = lambda r: {(k, n): v for k in ("fid", "ode_fid") for n, v in r[k].items()}
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys() and fa
  for k in fa:
    assert abs(fa[k] - fb[k]) <= rtol * abs(fa[k]), (k, fa[k], fb[k])
  assert a["num_samples"] == b["num_samples"] == NUM_SAMPLES


def test_fid_on_four_devices_equals_one_device(tmp_path):
  results = {(r["run"], r["devices"]): r for r in evaluation_numbers(tmp_path)}
  assert set(results) == {(run, d) for run in ("flow_map", "consistency", "conditional")
                          for d in (1, 4)}
  for run in ("flow_map", "consistency", "conditional"):
    one, four = results[(run, 1)], results[(run, 4)]
    assert_same_numbers(four, one)
  # The samplers, step counts and guidance scales differ, so the equality is not that of one
  # number.
  values = [v for d in (results[(run, 1)] for run in ("flow_map", "consistency", "conditional"))
            for v in list(d["fid"].values()) + list(d["ode_fid"].values())]
  assert len(set(values)) == len(values), values
  assert all(np.isfinite(values)) and min(values) > 0


# ------------------------------------------------------------------------------------- the script


def _field(condition=None):
  """A velocity field v(s, t, x) in closed form: nonlinear in x, varying in s and t, and (given
  a `flow_map.Condition`) in the label and the guidance scale."""
  import jax.numpy as jnp

  def v(s, t, x):
    shift = 0.0
    if condition is not None:
      w = 1.0 if condition.guidance is None else condition.guidance
      shift = (0.1 * condition.label * w)[:, None, None, None]
    return -x + 0.5 * jnp.sin(3 * x + (s + 2 * t)[:, None, None, None]) + shift

  return v


def _main(workdir: str) -> None:
  import dataclasses

  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh

  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    from flow_maps import cli
    cli.initialize_distributed()
  from flow_maps import config_defaults, train
  from flow_maps.evaluation import image_eval

  proj = jax.random.normal(jax.random.PRNGKey(3), (8 * 8 * 3, 32)) / 8
  features = jax.jit(lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ proj))
  meshes = [train.make_mesh()]
  # jax.make_mesh keeps jax.devices()' order on CPU, in one process or several.
  assert [d.id for d in meshes[0].devices.flat] == [d.id for d in jax.devices()]
  if (jax.process_count() == 1 and jax.device_count() > 1
      and not os.environ.get("EVAL_FULL_MESH_ONLY")):
    meshes.append(Mesh(np.asarray(jax.devices()[:1]), ("data",)))
  for run in ("flow_map", "consistency", "conditional"):
    config = config_defaults.with_preset(config_defaults.digits("smoke"), "lsd")
    # Whole layout periods on each of 4 devices (and whole guided rows, conditional).
    config.train.batch_size = 32
    config.eval.num_samples, config.eval.batch_size = NUM_SAMPLES, BATCH
    config.eval.sampling_steps, config.eval.ode_steps = (1, 2), (1,)
    if run == "consistency":
      config.eval.sampler = "consistency"
      config.eval.sampling_steps, config.eval.ode_steps = (2,), ()
    if run == "conditional":
      config.data.conditional = True
      config.guidance.learned = True
      config.eval.sampling_steps, config.eval.ode_steps, config.eval.guidance = (2,), (1,), (1.0, 2.0)
    base = train.build_experiment(config)
    for mesh in meshes:
      exp = dataclasses.replace(base, mesh=mesh)
      key = jax.random.PRNGKey(7)
      if run == "conditional":
        result = image_eval.evaluate_guided(_field, exp, config, key=key, workdir=workdir,
                                            features=features)
        result = {"fid": {f"w{w}_{n}": v for w, row in result["guidance"].items()
                          for n, v in row["fid"].items()},
                  "ode_fid": {f"w{w}_{n}": v for w, row in result["guidance"].items()
                              for n, v in row["ode_fid"].items()},
                  "num_samples": result["num_samples"]}
      else:
        result = image_eval.evaluate(_field(), exp, config, key=key, workdir=workdir,
                                     features=features)
      print(MARK + json.dumps(dict(result, run=run, devices=mesh.size,
                                   processes=jax.process_count())), flush=True)


if __name__ == "__main__":
  _main(sys.argv[1])
