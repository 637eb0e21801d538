"""CIFAR-10 with the preset `consistency_training` (`docs/method.md` §8) on the published image settings (§5)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.cifar10(variant), "consistency_training")
