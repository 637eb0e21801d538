"""CelebA 64x64, Eulerian self-distillation (ESD), full stop-gradient (unstable on images in the paper); the published image settings (`docs/method.md` §5)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.celeba64(variant), "esd")
