"""Our train step against the paper's release, side by side in one process.

For each objective, the same network (MLP of --depth hidden layers of --width, GELU), the same
batch, the same optimiser (global-norm clip 10, then RAdam) and the same two EMAs:
  - ours: the whole step of `flow_maps.train.make_train_step` (data draw, loss, update, EMAs),
    built from `configs/checkerboard_lsd.py` with the objective of `OURS` below;
  - the release's loop iteration (`py/launchers/learn.py` `train_loop`): `get_loss_fn_args`
    (its jitted draw of noise and times, then the next data batch), `train_step`,
    `update_ema_params`. Its wandb logging and progress bar are left out, and its tf.data
    pipeline is replaced by batches sliced from a pool drawn by its own `sample_checkerboard`:
    both only add time to the release, so the ratios here are not in our favour.
Warm-up excluded; rounds interleaved (each round runs every variant, ours and the release's step
of one objective back to back, the order rotated); medians; each ratio ours / release is the
median over rounds of the ratio within a round; the same for the CPU time the process spends
per step, which other processes on the cores disturb less than the wall time. XLA's FLOP count
and the number of matmuls in the optimised HLO of every compiled function are printed too:
unlike the times, they do not depend on the machine's load (recorded with the times).

The release is a checkout of github:roni-dot/regularized-loss-flow-maps (commit afdaefa); it
imports TensorFlow at import time, so either TensorFlow is installed or the two import-only
patches of `/work/shared/stack-notes.md` are applied to `py/common/{state_utils,datasets}.py`.
Nothing of it is copied here: it is imported from --release.

  python experiments/compare_release.py --release=/tmp/release --width=512 --depth=5
  python experiments/compare_release.py --release=/tmp/release --width=256 --depth=4 \\
      --objectives=lsd,flow_matching --rounds=20 --out=/tmp/compare.json --dump-hlo=/tmp/hlo
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import re
import statistics
import sys
import time
from typing import Any, Callable

# Our variants: presets of `config_defaults.PRESETS`, each set on top of BASE_CONFIG.
OURS = ("flow_matching", "lsd", "esd", "psd_m", "psd_u")
# The same objectives in the release's `configs/checker.py`: (loss_type, psd_type, stopgrad_type,
# diag_fraction). Flow matching is its LSD config with every row on the diagonal.
RELEASE = {
    "flow_matching": ("lsd", None, "convex", 1.0),
    "lsd": ("lsd", None, "convex", 0.75),
    "esd": ("esd", None, "full", 0.75),
    "psd_m": ("psd", "midpoint", "convex", 0.75),
    "psd_u": ("psd", "uniform", "convex", 0.75),
}
BASE_CONFIG = "configs/checkerboard_lsd.py"
RELEASE_FILES = ("py/configs/checker.py", "py/common/losses.py", "py/common/loss_args.py",
                 "py/common/updates.py", "py/common/state_utils.py", "py/common/datasets.py",
                 "py/common/interpolant.py")
POOL = 1_000_000  # checkerboard points the release's batches are sliced from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from flow_maps import config_defaults  # noqa: E402
from flow_maps import train  # noqa: E402


def _load_module(name: str, path: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def import_release(path: str) -> dict[str, Any]:
  """The release's modules, or SystemExit with one line saying what is wrong."""
  if not os.path.isdir(path):
    sys.exit(f"--release={path}: no such directory (fetch github:roni-dot/"
             "regularized-loss-flow-maps and check out afdaefa there)")
  missing = [f for f in RELEASE_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    sys.exit(f"--release={path}: not a checkout of regularized-loss-flow-maps "
             f"(no {missing[0]})")
  sys.path.insert(0, os.path.join(path, "py"))
  try:
    from common import datasets, interpolant, loss_args, losses, state_utils, updates
  except ImportError as e:
    sys.exit(f"--release={path}: importing it failed ({e}); install TensorFlow or apply the "
             "import-only patches of /work/shared/stack-notes.md")
  checker = _load_module("_release_checker", os.path.join(path, "py/configs/checker.py"))
  return dict(datasets=datasets, interpolant=interpolant, loss_args=loss_args, losses=losses,
              state_utils=state_utils, updates=updates, checker=checker)


# --------------------------------------------------------------------------- the variants


class Variant:
  """A step to time: `run(n)` runs n steps, carrying the state, and waits for the last."""

  def __init__(self, label: str, run: Callable[[int], tuple[float, float]], compiled: list,
               params: Any):
    self.label = label
    self.run = run
    self.compiled = compiled  # (name, XLA executable) of every jitted function of one step
    self.parameters = int(ravel_pytree(params)[0].size)

  @property
  def flops(self) -> float:
    return sum(_cost(c).get("flops", float("nan")) for _, c in self.compiled)

  @property
  def matmuls(self) -> int:
    return sum(count_matmuls(c.as_text()) for _, c in self.compiled)


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def count_matmuls(hlo_text: str) -> int:
  """dot instructions of the optimised HLO (inside fusions included)."""
  return len(re.findall(r"\bdot\(", hlo_text))


def _timed(step: Callable[[], Any]) -> Callable[[int], tuple[float, float]]:
  """(wall seconds, CPU seconds of the whole process) per step over n steps."""
  def run(n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
      out = step()
    jax.block_until_ready(out)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n
  return run


def ours(objective: str, width: int, depth: int, batch: int) -> Variant:
  config = config_defaults.with_preset(
      _load_module("_base_config", os.path.join(ROOT, BASE_CONFIG)).get_config(), objective)
  config.model.width = width
  config.model.depth = depth
  config.train.batch_size = batch
  exp = train.build_experiment(config)
  holder = {"state": train.init_state(exp)}
  params = jax.tree.map(np.asarray, holder["state"].params)  # before the first step donates it
  compiled = train.compile_step(exp, train.make_train_step(exp), holder["state"])
  batch = next(exp.source.batches(0))  # toy data: the empty batch, the data drawn in the step

  def step():
    holder["state"], metrics = compiled.run(holder["state"], batch)
    return holder["state"], metrics

  return Variant(f"ours/{objective}", _timed(step), [("step", compiled.executable)], params)


def release(rel: dict, objective: str, width: int, depth: int, batch: int) -> Variant:
  """The release's `setup_state` (`py/launchers/learn.py`) with a pool for its tf.data."""
  from ml_collections import config_dict
  loss_type, psd_type, stopgrad_type, diag_fraction = RELEASE[objective]
  cfg = rel["checker"].get_config(
      rel["checker"].experiments.index((loss_type, psd_type, stopgrad_type)))
  cfg.training.psd_type = psd_type
  cfg.training.ndevices = 1
  cfg.optimization.bs = batch
  cfg.optimization.diag_fraction = diag_fraction
  cfg.network.n_neurons = width
  cfg.network.n_hidden = depth - 1  # its MLP has an input layer before n_hidden hidden layers
  np.random.seed(0)  # sample_checkerboard draws from numpy's global generator
  pool = rel["datasets"].sample_checkerboard(POOL, None, n_squares=4)
  cfg.network.rescale = float(np.std(pool))  # as `datasets.setup_target` (gaussian_scale adaptive)
  batches = (pool[i:i + batch] for i in itertools.cycle(range(0, POOL - batch + 1, batch)))
  ex_input = pool[0]
  interp = rel["interpolant"].setup_interpolant(cfg)
  cfg = config_dict.FrozenConfigDict(cfg)
  key = jax.random.PRNGKey(cfg.training.seed)
  state, net, schedule, key = rel["state_utils"].setup_training_state(cfg, ex_input, key)
  statics = rel["state_utils"].StaticArgs(
      net=net, schedule=schedule, loss=rel["losses"].setup_loss(cfg, net, interp),
      get_loss_fn_args=rel["loss_args"].get_loss_fn_args,
      train_step=rel["updates"].setup_train_step(cfg),
      update_ema_params=rel["updates"].setup_ema_update(cfg),
      ds=batches, interp=interp, sample_rho0=rel["datasets"].setup_base(cfg, ex_input))
  holder = {"state": state, "key": key}

  def step():  # the body of `train_loop`, without wandb and tqdm
    args, holder["key"] = statics.get_loss_fn_args(cfg, statics, holder["state"], holder["key"])
    holder["state"], loss, grads = statics.train_step(holder["state"], statics.loss, args)
    holder["state"] = statics.update_ema_params(holder["state"])
    return holder["state"], loss, grads

  diag_bs, offdiag_bs = rel["loss_args"]._get_diag_offdiag_bs(cfg, batch)
  args, _ = statics.get_loss_fn_args(cfg, statics, state, key)
  compiled = [
      ("draw", rel["loss_args"].get_loss_fn_args_randomness.lower(
          key, cfg, statics.sample_rho0, diag_bs, offdiag_bs).compile()),
      ("step", statics.train_step.lower(state, statics.loss, args).compile()),
      ("ema", statics.update_ema_params.lower(state).compile()),
  ]
  return Variant(f"release/{objective}", _timed(step), compiled, state.params)


# --------------------------------------------------------------------------- timing


def time_rounds(pairs: dict[str, tuple[Variant, Variant]], rounds: int, steps: int,
                warmup: int) -> tuple[dict, list]:
  """Per round, every (ours, release) pair back to back, pairs rotated, the pair's order
  alternated. Returns {label: [(wall, CPU) seconds per step, one per round]} and the 1-min load
  per round."""
  for a, b in pairs.values():
    a.run(warmup)
    b.run(warmup)
  names = list(pairs)
  seconds = {v.label: [] for pair in pairs.values() for v in pair}
  loads = []
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      pair = pairs[name] if r % 2 == 0 else pairs[name][::-1]
      for v in pair:
        seconds[v.label].append(v.run(steps))
    loads.append(round(os.getloadavg()[0], 2))
    print(f"  round {r + 1}/{rounds}: load {loads[-1]}", flush=True)
  return seconds, loads


def summarise(pairs, seconds) -> dict:
  rows = {}
  for name, (a, b) in pairs.items():
    sa, sb = np.asarray(seconds[a.label]), np.asarray(seconds[b.label])  # [rounds, (wall, cpu)]
    ratios = sa[:, 0] / sb[:, 0]
    rows[name] = dict(
        ours_ms=1e3 * float(np.median(sa[:, 0])), release_ms=1e3 * float(np.median(sb[:, 0])),
        ratio=float(np.median(ratios)),
        ratio_quartiles=[float(q) for q in np.quantile(ratios, [0.25, 0.75])],
        # CPU time of the process per step: what the step costs, less sensitive than the wall
        # time to other processes taking the cores
        ours_cpu_ms=1e3 * float(np.median(sa[:, 1])), release_cpu_ms=1e3 * float(np.median(sb[:, 1])),
        cpu_ratio=float(np.median(sa[:, 1] / sb[:, 1])),
        ours_gflop=a.flops / 1e9, release_gflop=b.flops / 1e9,
        release_gflop_parts={k: _cost(c).get("flops", float("nan")) / 1e9 for k, c in b.compiled},
        flop_ratio=a.flops / b.flops, ours_matmuls=a.matmuls, release_matmuls=b.matmuls,
        parameters=a.parameters, ours_seconds=sa.tolist(), release_seconds=sb.tolist())
  return rows


def table(result: dict) -> str:
  s, m = result["settings"], result["machine"]
  lines = [f"MLP {s['width']} x {s['depth']}, batch {s['batch']}; {s['rounds']} interleaved rounds "
           f"of {s['steps_per_round']} steps, medians; load average {m['load_before']} -> "
           f"{m['load_after']} (1-min per round {min(m['round_loads'])}-{max(m['round_loads'])})",
           "",
           "| objective | ours ms | release ms | ours / release (IQR) | CPU-time ratio | "
           "ours GFLOP | release GFLOP | FLOP ratio | matmuls ours / release |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, r in result["objectives"].items():
    q = r["ratio_quartiles"]
    lines.append(f"| {name} | {r['ours_ms']:.1f} | {r['release_ms']:.1f} | {r['ratio']:.3f} "
                 f"({q[0]:.3f}-{q[1]:.3f}) | {r['cpu_ratio']:.3f} | {r['ours_gflop']:.2f} | "
                 f"{r['release_gflop']:.2f} | "
                 f"{r['flop_ratio']:.3f} | {r['ours_matmuls']} / {r['release_matmuls']} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--release", required=True, help="a checkout of the release (commit afdaefa)")
  p.add_argument("--width", type=int, default=512)
  p.add_argument("--depth", type=int, default=5, help="hidden layers of --width (published: 5)")
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--objectives", default=",".join(OURS),
                 help=f"comma-separated subset of {','.join(OURS)}")
  p.add_argument("--rounds", type=int, default=15, help="timed rounds")
  p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
  p.add_argument("--out", default=None, help="JSON output (default runs/compare_release_WxD.json)")
  p.add_argument("--dump-hlo", default=None, metavar="DIR",
                 help="write the optimised HLO of every compiled function to DIR")
  args = p.parse_args(argv)
  names = [n for n in args.objectives.split(",") if n]
  unknown = [n for n in names if n not in OURS]
  if unknown:
    p.error(f"--objectives: unknown {unknown}; allowed: {','.join(OURS)}")
  if args.depth < 1:
    p.error("--depth: at least 1 hidden layer")

  rel = import_release(args.release)
  load_before = [round(x, 2) for x in os.getloadavg()]
  pairs = {}
  for name in names:
    print(f"compiling {name}", flush=True)
    a = ours(name, args.width, args.depth, args.batch)
    b = release(rel, name, args.width, args.depth, args.batch)
    if a.parameters != b.parameters:
      sys.exit(f"{name}: {a.parameters} parameters here, {b.parameters} in the release")
    pairs[name] = (a, b)
  if args.dump_hlo:
    os.makedirs(args.dump_hlo, exist_ok=True)
    for pair in pairs.values():
      for v in pair:
        for part, c in v.compiled:
          with open(os.path.join(args.dump_hlo, f"{v.label.replace('/', '_')}_{part}.txt"),
                    "w") as f:
            f.write(c.as_text())
  seconds, loads = time_rounds(pairs, args.rounds, args.steps, args.warmup)
  result = dict(
      settings=dict(width=args.width, depth=args.depth, batch=args.batch, rounds=args.rounds,
                    steps_per_round=args.steps, warmup=args.warmup, release=args.release,
                    ours={k: config_defaults.PRESETS[k] for k in OURS},
                    release_configs=RELEASE),
      machine=dict(load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()],
                   round_loads=loads, cpus=os.cpu_count(), jax=jax.__version__,
                   devices=jax.device_count()),
      objectives=summarise(pairs, seconds))
  text = table(result)
  print("\n" + text)
  out = args.out or os.path.join(ROOT, "runs", f"compare_release_{args.width}x{args.depth}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
