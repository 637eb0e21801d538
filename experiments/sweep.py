"""Runs a sweep: list its members, run one (what a cluster or pod launcher calls), run them all
here in sequence, or aggregate their results. See `docs/sweeps.md` and `flow_maps/sweeps.py`.

  python experiments/sweep.py experiments/sweeps/checkerboard_reproduction.py --root=runs/cb list
  python experiments/sweep.py experiments/sweeps/checkerboard_reproduction.py --root=runs/cb run --index=3
  python experiments/sweep.py experiments/sweeps/checkerboard_reproduction.py --root=runs/cb run-all
  python experiments/sweep.py experiments/sweeps/checkerboard_reproduction.py --root=runs/cb aggregate

A sweep file may take an argument after a colon (`experiments/sweeps/images.py:celeba`).
"""

from __future__ import annotations

import argparse
import os
import sys

# The checkout this script is in: its `configs/` are where a sweep's relative config paths start,
# and its `runs/` holds the default sweep roots.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT_ROOT)

from flow_maps import sweeps  # noqa: E402  (after the path set-up, for runs from a checkout)

STOPPED = (130, 143)  # 128 + SIGINT, 128 + SIGTERM: the run checkpointed and stopped


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep", help="sweep file, optionally with :arg")
  parser.add_argument("--root", default=None,
                      help="sweep root: member K runs in ROOT/K_<name> (default: runs/<sweep name>)")
  sub = parser.add_subparsers(dest="action", required=True)
  sub.add_parser("list", help="list the members, their workdirs and states")
  run = sub.add_parser("run", help="run one member (resumes it if it was interrupted)")
  run.add_argument("--index", type=int, required=True)
  run_all = sub.add_parser("run-all", help="run every member in sequence, then aggregate")
  for p in (run, run_all):
    p.add_argument("--mode", choices=sweeps.MODES, default=None,
                   help="override the sweep's mode (train | eval | sample | train_and_eval)")
    p.add_argument("--force", action="store_true", help="run members that are already done")
    p.add_argument("--dry-run", action="store_true", help="print the command(s), run nothing")
    p.add_argument("--distributed", action="store_true",
                   help="pass --distributed to flow_maps.main: one process per host")
  sub.add_parser("aggregate", help="write ROOT/results.csv and ROOT/results.md")
  return parser.parse_args(argv)


def _list(sweep: sweeps.Sweep, members, root: str) -> int:
  print(f"sweep {sweep.name}: {len(members)} member(s), mode {sweep.mode}, root {root}")
  missing = []
  for m in members:
    state, _ = sweeps.member_state(m, root)
    exists = os.path.exists(m.config_path)
    if not exists:
      missing.append(m)
    overrides = " ".join(f"{k}={v}" for k, v in m.overrides.items())
    note = "" if exists else "  [config file missing]"
    config = m.config + (f":{m.variant}" if m.variant else "")
    print(f"{m.index:4d}  {m.name:36s}  {state:12s}  {config}{note}  {overrides}")
  if missing:
    paths = sorted({m.config for m in missing})
    print(f"{len(missing)} member(s) name config files that do not exist (yet): "
          f"{', '.join(paths)}")
  return 0


def main(argv=None) -> int:
  args = _parse(argv)
  sweep = sweeps.load_sweep(args.sweep)
  members = sweep.expand(base_dir=PROJECT_ROOT)
  root = os.path.abspath(args.root or os.path.join(PROJECT_ROOT, "runs", sweep.name))
  if args.action == "list":
    return _list(sweep, members, root)
  if args.action == "aggregate":
    results = sweeps.aggregate(sweep, root)
    print(sweeps.to_markdown(results, f"Sweep {sweep.name}: {root}"))
    print(f"wrote {os.path.join(root, 'results.csv')} and {os.path.join(root, 'results.md')}")
    return 0

  mode = args.mode or sweep.mode
  flags = ["--distributed"] if args.distributed else []
  if args.action == "run":
    if not 0 <= args.index < len(members):
      print(f"--index={args.index} out of range: the sweep has {len(members)} members "
            f"(0 to {len(members) - 1})", file=sys.stderr)
      return 2
    chosen = [members[args.index]]
  else:
    chosen = members
  if args.dry_run:
    for m in chosen:
      print(" ".join(sweeps.command(m, root, mode, flags)))
    return 0

  codes = {}
  for m in chosen:
    print(f"member {m.index} ({m.name}) -> {m.workdir(root)}", flush=True)
    codes[m.index] = sweeps.run_member(m, root, mode, flags, force=args.force,
                                       echo=args.action == "run-all")
    if codes[m.index] in STOPPED and args.action == "run-all":
      print("stopped by a signal: the remaining members were not started", flush=True)
      break
  if args.action == "run":
    return codes[chosen[0].index]
  results = sweeps.aggregate(sweep, root)
  failed = {i: c for i, c in codes.items() if c}
  print(f"{len(codes) - len(failed)} of {len(members)} member(s) ran to completion here; "
        f"results in {os.path.join(root, 'results.md')}")
  for p in results.problems:
    print("  " + p)
  return 1 if failed or len(codes) < len(members) else 0


if __name__ == "__main__":
  sys.exit(main())
