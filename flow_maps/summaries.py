"""TensorBoard scalars (and PNG images) without TensorFlow.

The event files TensorBoard reads are written with tensorboard's own pure-Python writer
(`tensorboard.summary.writer.event_file_writer`), the same file format as `tf.summary` writes.
That writer reaches TensorFlow only through `tensorboard.compat.tf`, which imports TensorFlow
when it is installed unless the module `tensorboard.compat.notf` exists, TensorBoard's own switch
to its TensorFlow stub. Registering that module here keeps a training process free of the
TensorFlow import (5 to 40 s on the 2-core CPU, by load), which only the image data sets need.
"""

from __future__ import annotations

import struct
import sys
import time
import types

# TensorBoard's switch to its TensorFlow stub (see the module docstring); set before the writer
# is imported. It only affects tensorboard.compat, which nothing else here uses.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402


class ScalarWriter:
  """Scalars per step into DIR/events.out.tfevents.*: `write_scalars(step, {tag: value})`;
  `write_png(step, tag, png)` adds an already encoded PNG as an image."""

  def __init__(self, logdir: str):
    self._writer = EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def write_png(self, step: int, tag: str, png: bytes) -> None:
    if png[:8] != b"\x89PNG\r\n\x1a\n":
      raise ValueError(f"{tag}: not a PNG")
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, first after the signature
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                      encoded_image_string=png)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class WandbWriter:
  """The same calls into a Weights & Biases run (`train.wandb_project`, for users of the paper's
  release, which logs there). wandb is imported only here, when a run asks for it, and is not a
  dependency: validation refuses the field by name when it is not installed. The run id is
  derived from the workdir, so that a resumed run continues the same W&B run."""

  def __init__(self, logdir: str, project: str, config: dict):
    import hashlib
    import os

    import wandb
    logdir = os.path.abspath(logdir)
    self._wandb = wandb
    self._run = wandb.init(project=project, dir=logdir, config=config, resume="allow",
                           id=hashlib.sha256(logdir.encode()).hexdigest()[:16],
                           name=os.path.basename(logdir))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    self._run.log(dict(scalars), step=int(step))

  def write_png(self, step: int, tag: str, png: bytes) -> None:
    import io

    from PIL import Image
    self._run.log({tag: self._wandb.Image(Image.open(io.BytesIO(png)))}, step=int(step))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self._run.finish()
