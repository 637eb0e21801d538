"""Quality against compute on the checkerboard (`docs/curves.md`): the paper's four objectives and
flow matching, 3 seeds each, at a short CPU budget, each run evaluated at log-spaced steps while
it trains; `experiments/curves.py` turns the runs into curves.

The budget is the demo variant (MLP 4 x 256, batch 1024, RAdam 2e-3) cut to 1,500 steps, with the
paper's time law and schedule (the triangle; constant learning rate for 750, then
lr0 / sqrt(step / 750)); 6 evaluations (steps 47 to 1,500, doubling)
of 10,000 samples each, of the online weights (an EMA of decay 0.999 is still near its start at
the first points). The argument, if given, sets the number of steps.

  python experiments/sweep.py experiments/sweeps/checkerboard_curves.py --root=runs/curves run-all
  python experiments/curves.py experiments/sweeps/checkerboard_curves.py --root=runs/curves
"""

from flow_maps import config_defaults, sweeps

OBJECTIVES = ("flow_matching", "lsd", "esd", "psd_m", "psd_u")
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
  steps = int(arg) if arg else 1500
  budget = {"train.num_steps": steps, "optim.decay_start": steps // 2,
            **config_defaults.PUBLISHED_TIMES_AND_SCHEDULE,
            "train.checkpoint_every": steps, "train.log_every": max(1, steps // 10),
            "train.eval_schedule": "log", "train.eval_points": 6,
            "train.eval_num_samples": 10_000, "eval.params": "online", "eval.ode_steps": (16,)}
  members = [{"config": f"configs/checkerboard_{o}.py", "seed": s}
             for s in SEEDS for o in OBJECTIVES]  # seed-major: a cut sweep has every objective
  return sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="demo", members=members,
                      overrides=budget, mode="train", name="checkerboard_curves")
