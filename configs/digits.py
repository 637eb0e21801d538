"""scikit-learn's 1,797 8x8 digits (shipped in the wheel, no download): the image pipeline end to
end at toy scale on a CPU, with any objective of the presets table (`docs/method.md` §8):

  --config=configs/digits.py:preset=lsd,variant=demo

Arguments (`config_defaults.parse_arg`: `key=value`, comma-separated; each has a default):
  preset   a name of `config_defaults.PRESETS` (default lsd);
  variant  "" (the tiny UNet at 32 channels, 20k steps), demo (a few CPU minutes) or smoke
           (seconds, for tests).
The settings of each variant are `config_defaults.digits`'s.
"""

from flow_maps import config_defaults as cd


def get_config(arg=None):
  a = cd.parse_arg(arg, preset="lsd", variant="", choices=cd.ARG_CHOICES)
  return cd.with_preset(cd.digits(a.variant), a.preset)
