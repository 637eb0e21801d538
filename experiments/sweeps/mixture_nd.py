"""The d-dimensional Gaussian mixture over its dimension and its Lipschitz knob, for the paper's
four objectives and flow matching (`docs/mixture_nd.md`).

Members: objective x data.dim x data.separation x seed, at data.component_std = 0.25 and three
components (sigma0 = 1), so that the exact velocity's Lipschitz constant (about
sigma0 separation^2 / component_std^3, `data/mixture_nd.py`) depends on the separation only and
the dimension is varied at a fixed constant. Every member is the demo network and optimiser cut to
a fixed budget (the same for every d), evaluated by `evaluation/mixture_eval.py`. The argument
picks the size:
  (none)  d in {2, 4, 8, 16, 32, 64, 128}, separation in {0.5, 1, 2, 4}, 3 seeds, 5 objectives,
          4,000 steps (420 members);
  seeds   the five objectives, 3 seeds, 2,000 steps, on four (d, separation) cells: d in
          {2, 8, 32} at separation 1 (the dimension at a fixed constant, 5.7) and separation 4
          at d = 8 (constant 110): 60 members, the run of `docs/mixture_nd.md`;
  small   d in {2, 8}, separation in {1, 4}, LSD and flow matching, seed 0, 2,000 steps
          (8 members; 4 ran for `docs/mixture_nd.md`, 7 to 25 minutes each on the 2-core CPU
          shared with other jobs, load average about 18);
  smoke   d in {2, 4}, separation 2, LSD and flow matching, seed 0, a few steps (tests).

  python experiments/sweep.py experiments/sweeps/mixture_nd.py:small --root=runs/mixture_nd run-all
  python experiments/mixture_figures.py experiments/sweeps/mixture_nd.py:small --root=runs/mixture_nd
"""

from flow_maps import sweeps

OBJECTIVES = ("lsd", "esd", "psd_m", "psd_u", "flow_matching")
SIZES = {
    "": dict(objectives=OBJECTIVES, dims=(2, 4, 8, 16, 32, 64, 128),
             separations=(0.5, 1.0, 2.0, 4.0), seeds=(0, 1, 2), variant="demo",
             budget={"train.num_steps": 4000, "optim.decay_start": 2000}),
    "seeds": dict(objectives=OBJECTIVES, cells=((2, 1.0), (8, 1.0), (32, 1.0), (8, 4.0)),
                  seeds=(0, 1, 2), variant="demo",
                  budget={"train.num_steps": 2000, "optim.decay_start": 1000}),
    "small": dict(objectives=("lsd", "flow_matching"), dims=(2, 8), separations=(1.0, 4.0),
                  seeds=(0,), variant="demo",
                  budget={"train.num_steps": 2000, "optim.decay_start": 1000}),
    "smoke": dict(objectives=("lsd", "flow_matching"), dims=(2, 4), separations=(2.0,),
                  seeds=(0,), variant="smoke", budget={"train.num_steps": 4}),
}


def get_sweep(arg=None):
  if (arg or "") not in SIZES:
    raise ValueError(f"unknown size {arg!r}; allowed: '', {', '.join(k for k in SIZES if k)}")
  size = SIZES[arg or ""]
  budget = dict(size["budget"])
  budget["train.checkpoint_every"] = budget["train.num_steps"]
  if "cells" in size:  # chosen (d, separation) pairs
    cells = sweeps.zipped({"data.separation": [sep for _, sep in size["cells"]],
                           "data.dim": [dim for dim, _ in size["cells"]]})
  else:  # every d at every separation
    cells = sweeps.product(sweeps.axis("data.separation", size["separations"]),
                           sweeps.axis("data.dim", size["dims"]))
  members = sweeps.product(  # seed-major: a sweep cut short still has every cell at seed 0
      sweeps.axis("seed", size["seeds"]),
      sweeps.axis("config", [f"configs/mixture_nd_{name}.py" for name in size["objectives"]]),
      cells)
  return sweeps.Sweep(config="configs/mixture_nd_lsd.py", variant=size["variant"],
                      members=members, overrides=budget, mode="train_and_eval",
                      name="mixture_nd" + (f"_{arg}" if arg else ""))
