"""`configs/mnist_lsd.py` with the digits' labels and classifier-free guidance learned into the map
(`docs/method.md` §9): the UNet takes the class and the scale w in [0, 4], and one call per step
samples the guided flow's map at any w in that range. FID (`--mode=eval`) is per w in
eval.guidance, with labels drawn uniformly over the ten classes; `--mode=sample` writes each w's
samples of sample.label (-1: uniform labels)."""

from flow_maps import config_defaults


def get_config(variant=None):
  c = config_defaults.with_preset(config_defaults.mnist5k(variant), "lsd")
  return config_defaults.with_learned_guidance(c)
