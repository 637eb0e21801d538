"""The checkerboard comparison of `docs/method.md` §6 at a stated budget, next to the paper's table.

  python experiments/reproduce_checkerboard.py --root=runs/reproduce --variant=demo --seed=0

Trains LSD, ESD, PSD-M, PSD-U and the flow-matching baseline (the members of
`experiments/sweeps/checkerboard_reproduction.py` with one seed), each in its own workdir under
--root (re-running resumes or skips finished members), then writes `<root>/reproduction.md`: our
KL(data || model) for N = 1, 2, 4, 8, 16 map steps with the estimator's noise floor, our
flow-map error against the exact reference map, the flow-matching model's ODE KLs, and the
paper's KL table. The paper's KLs come from an unpublished recipe at 250k steps of batch 100k:
compare the ordering and the trend in N, not the values.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flow_maps import sweeps  # noqa: E402

_ROOT = flags.DEFINE_string("root", "runs/reproduce_checkerboard", "Where the members run.")
_VARIANT = flags.DEFINE_enum("variant", "demo", ["", "demo", "smoke"],
                             "Config variant of every member: '' published, demo (CPU), smoke.")
_SEED = flags.DEFINE_integer("seed", 0, "The one seed every member uses.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "A config override for every member, e.g. train.num_steps=6000.")

SWEEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweeps",
                     "checkerboard_reproduction.py")
STEPS = ("1", "2", "4", "8", "16")
LABELS = {"lsd": "LSD", "esd": "ESD", "psd_m": "PSD-M", "psd_u": "PSD-U",
          "flow_matching": "flow matching (map)"}
# `docs/method.md` §6: the project page's checkerboard KLs at N = 1, 2, 4, 8, 16.
PAPER_KL = {
    "LSD": (0.0864, 0.0765, 0.0708, 0.0699, 0.0710),
    "ESD": (0.0983, 0.0921, 0.0834, 0.0816, 0.0751),
    "PSD-M": (0.1456, 0.0891, 0.0812, 0.0717, 0.0689),
    "PSD-U": (0.1113, 0.1067, 0.0747, 0.0727, 0.0679),
}


def _parse_override(text: str) -> tuple[str, object]:
  key, sep, value = text.partition("=")
  if not sep:
    raise app.UsageError(f"--override needs key=value, got {text!r}")
  try:
    return key, eval(value, {}, {})  # numbers and tuples, as ml_collections would parse them
  except Exception:
    return key, value


def members() -> list[sweeps.Member]:
  sweep = sweeps.load_sweep(SWEEP + (f":{_VARIANT.value}" if _VARIANT.value else ""))
  overrides = dict(_parse_override(o) for o in _OVERRIDES.value)
  chosen = [m for m in sweep.expand() if m.overrides.get("seed") == _SEED.value]
  if not chosen:
    raise app.UsageError(f"the sweep has no member with seed {_SEED.value}")
  return [sweeps.Member(m.index, m.name, m.config, m.variant, {**m.overrides, **overrides})
          for m in chosen]


def _objective(member: sweeps.Member) -> str:
  return os.path.basename(member.config)[len("checkerboard_"):-len(".py")]


def _row(label: str, values) -> str:
  return "| " + " | ".join([label] + [f"{v:.4f}" if isinstance(v, float) else str(v)
                                      for v in values]) + " |"


def table(chosen: list[sweeps.Member], root: str) -> str:
  results = {}
  for m in chosen:
    result = sweeps.latest_eval(m.workdir(root))
    if result is not None:
      results[_objective(m)] = result
  header = "| method | " + " | ".join(f"N = {n}" for n in STEPS) + " |"
  rule = "|---" * (len(STEPS) + 1) + "|"
  lines = ["## Our KL(data || model), same seed for every objective", "", header, rule]
  floor, ode = None, None
  for name, label in LABELS.items():
    if name in results:
      r = results[name]
      lines.append(_row(label, [r["kl"][n] for n in STEPS]))
      floor = r["kl_noise_floor"]
      if name == "flow_matching":
        ode = r["ode_kl"]
    else:
      lines.append(_row(label, ["missing"] * len(STEPS)))
  if floor is not None:
    lines.append(_row("noise floor (exact samples)", [floor] * len(STEPS)))
  if ode:
    lines += ["", "Flow matching sampled with its ODE (Heun): " + ", ".join(
        f"{n} steps KL {kl:.4f}" for n, kl in ode.items())]
  lines += ["", "## Our flow-map error E|X_N(x0) - X_ref(x0)|^2 against the exact map", "",
            header, rule]
  for name, label in LABELS.items():
    if name in results:
      lines.append(_row(label, [f"{results[name]['flow_map_error'][n]:.2e}" for n in STEPS]))
  lines += ["", "## The paper's KL (project page; 250k steps, batch 100k, unpublished recipe)", "",
            header, rule]
  lines += [_row(label, list(values)) for label, values in PAPER_KL.items()]
  some = next(iter(results.values()), None)
  if some is not None:
    lines += ["", f"KL: {some.get('num_samples')} samples, {some.get('bins')}^2 histogram bins "
              f"(`flow_maps/evaluation/kl.py`); flow-map error on "
              f"{some.get('flow_map_error_samples')} samples; weights: {some.get('params')}; "
              f"evaluated at step {some.get('step')}."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  root = os.path.abspath(_ROOT.value)
  chosen = members()
  failed = []
  for m in chosen:
    print(f"member {m.index} ({m.name})", flush=True)
    code = sweeps.run_member(m, root, "train_and_eval", echo=True)
    if code:
      failed.append(m.name)
  text = table(chosen, root)
  path = os.path.join(root, "reproduction.md")
  with open(path, "w") as f:
    f.write(text)
  print(text)
  print(f"-> {path}")
  if failed:
    print(f"failed members: {', '.join(failed)} (see their log.txt)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
