"""The checkerboard KL table of `docs/method.md` §6: every objective × 3 seeds (15 members).

Each objective is its thin config file, as published (`configs/checkerboard_*.py`); flow matching
is the baseline sampled with the ODE. The argument picks the config variant of every member:
  (none)  the published settings: batch 100k, 250k steps (hours per member on an accelerator);
  demo    the few-minute CPU run of `make demo`;
  smoke   seconds, to try the runner.
"""

from flow_maps import config_defaults, sweeps

OBJECTIVES = ("lsd", "esd", "psd_m", "psd_u", "flow_matching")
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
  return sweeps.Sweep(
      config="configs/checkerboard_lsd.py",
      variant=arg or "",
      members=sweeps.product(
          sweeps.axis("config", [f"configs/checkerboard_{name}.py" for name in OBJECTIVES]),
          sweeps.axis("seed", SEEDS)),
      # The paper's time law and schedule in every variant (the demo's budget recipe is not
      # the paper's, `docs/recipe.md`).
      overrides=dict(config_defaults.PUBLISHED_TIMES_AND_SCHEDULE),
      mode="train_and_eval",
  )
