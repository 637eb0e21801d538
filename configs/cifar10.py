"""CIFAR-10 with any objective of the presets table (`docs/method.md` §8) on the published image
settings (`docs/method.md` §5): EDM2 UNet 128 channels, mult (2, 2, 2), 4 blocks, attention at 16,
dropout 0.13; batch 512, RAdam 1e-2, clip 1, 400k steps.

  --config=configs/cifar10.py:preset=psd_m,variant=demo

Arguments (`config_defaults.parse_arg`: `key=value`, comma-separated; each has a default):
  preset   a name of `config_defaults.PRESETS` (default lsd);
  variant  "" (the published setting), demo (batch 128, 50k steps: hours on one GPU) or smoke
           (the tiny UNet for a few steps, for tests).
The dataset is tfds `cifar10`, prepared as array_record (`README.md`, "Images").
"""

from flow_maps import config_defaults as cd


def get_config(arg=None):
  a = cd.parse_arg(arg, preset="lsd", variant="", choices=cd.ARG_CHOICES)
  return cd.with_preset(cd.cifar10(a.variant), a.preset)
