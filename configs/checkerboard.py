"""The paper's checkerboard (`docs/method.md` §5), uniform on the 8 even cells of a 4 x 4 grid,
with any objective of the presets table (`docs/method.md` §8):

  --config=configs/checkerboard.py:preset=psd_m,variant=demo

Arguments (`config_defaults.parse_arg`: `key=value`, comma-separated; each has a default):
  preset    a name of `config_defaults.PRESETS` (default lsd);
  variant   "" (the published setting: MLP 5 x 512, batch 100k, RAdam 1e-3, 250k steps),
            demo (about 3 minutes on 2 CPU cores) or smoke (seconds, for tests);
  guidance  none, or learned: the cell as a label and classifier-free guidance learned into the
            map for w in [0, 4] (`docs/method.md` §9).
The settings of each variant are `config_defaults.checkerboard`'s.
"""

from flow_maps import config_defaults as cd


def get_config(arg=None):
  a = cd.parse_arg(arg, preset="lsd", variant="", guidance="none",
                   choices=dict(cd.ARG_CHOICES, guidance=("none", "learned")))
  c = cd.with_preset(cd.checkerboard(a.variant), a.preset)
  return cd.with_learned_guidance(c) if a.guidance == "learned" else c
