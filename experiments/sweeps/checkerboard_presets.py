"""Every preset of the objective table on the checkerboard at one CPU budget, 3 seeds each
(`docs/presets.md`): the paper's four objectives, flow matching, the direct-training presets and
the distillation presets, on one backbone, one data pipeline and one evaluation.

The budget is the demo variant (MLP 4 x 256, batch 1024, RAdam 2e-3, EMA 0.999) cut to 2,000
steps (constant learning rate for 1,000, then lr0 / sqrt(step / 1,000); the triangle time law
where a preset has none of its own: the demo's budget recipe is not used here), evaluated on 50,000
samples; sCM's tangent warm-up is scaled with it (500 steps instead of 10,000). The distillation
presets need a teacher: the flow-matching member of seed 0 (member 0, run first), trained at the
same budget. The argument is the sweep's root, so that the distillation members find it:

  python experiments/sweep.py experiments/sweeps/checkerboard_presets.py:runs/presets \\
      --root=runs/presets run-all

Without an argument the distillation presets are left out.
"""

import os

from flow_maps import config_defaults, sweeps

SELF_AND_DIRECT = ("flow_matching", "lsd", "esd", "psd_m", "psd_u", "meanflow", "shortcut",
                   "consistency_training", "consistency_training_discrete")
DISTILLATION = ("lmd", "emd", "pmd", "consistency_distillation")
SEEDS = (0, 1, 2)
BUDGET = {"train.num_steps": 2000, "optim.decay_start": 1000, "train.checkpoint_every": 2000,
          "eval.num_samples": 50_000, "eval.ode_steps": (16,), "optim.schedule": "rsqrt",
          "optim.decay_end": 0}
# Per-preset changes that the budget forces (the preset's own value is for 10k+ step runs).
SCALED = {"consistency_training": {"objective.tangent_warmup_steps": 500}}
TEACHER = "0_checkerboard_flow_matching-seed=0-times=triangle"  # member 0's workdir under the root


def get_sweep(arg=None):
  presets = SELF_AND_DIRECT + (DISTILLATION if arg else ())
  members = []
  for seed in SEEDS:  # seed-major: a sweep cut short still has every preset at seed 0
    for preset in presets:
      member = {"config": f"configs/checkerboard_{preset}.py", "seed": seed,
                **SCALED.get(preset, {})}
      if "times" not in config_defaults.PRESETS[preset]:  # the paper's law, not the demo's
        member["objective.times"] = "triangle"
      if preset in DISTILLATION:
        member["objective.pretrained"] = os.path.join(os.path.abspath(arg), TEACHER)
      members.append(member)
  return sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="demo", members=members,
                      overrides=BUDGET, mode="train_and_eval", name="checkerboard_presets")
