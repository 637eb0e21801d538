"""Orbax checkpoints in `DIR/checkpoints`: periodic, bounded in number, atomic, verified.

A checkpoint holds the whole train state (parameters, optimiser state, EMAs, step, RNG key); the
data position is the step (toy data is drawn from the step's key, images are read by step), so
a restored run continues exactly where it stopped.

Every checkpoint is known good or reported:
  - the sha256 of each saved array's bytes (taken on the host before the save) goes into the
    checkpoint's own metadata (`custom_metadata["digest"]` in `<step>/_CHECKPOINT_METADATA`),
    committed atomically with it; after the commit the files are read back and their sha256
    written to `<step>/files.sha256` (a file Orbax ignores);
  - a restore checks the files, then the arrays, against them; a corrupt, truncated or
    incomplete checkpoint is named by step and file, and `restore_latest_intact` falls back to
    the newest intact one (moving the bad ones to `DIR/corrupt_checkpoints/`);
  - a save that fails raises `CheckpointSaveError` at once: saves are waited for, so a run never
    trains past a save that did not commit.

Paths go through `etils.epath` (Orbax's own path type), so a `gs://` workdir is kept as it is
(`os.path.abspath` would turn it into `$PWD/gs:/...`) and its files are read and written through
epath's backends. Only local workdirs are tested here (no bucket is reachable from the tests).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from typing import Any, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

DIGEST_FORMAT = 1
FILES_DIGEST = "files.sha256"
ORBAX_METADATA = "_CHECKPOINT_METADATA"


# How often a reader lists the checkpoints again when the one it chose was deleted under it.
GONE_RETRIES = 10


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir cannot be restored into this run."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (disk full, workdir gone or unwritable)."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files or arrays do not match their digests, or it is incomplete."""


def _host_leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
  """(path, host array) per leaf; arrays are replicated, so one addressable shard is the whole."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_shards[0].data if not leaf.is_fully_addressable else leaf
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    out.append((jax.tree_util.keystr(path), np.asarray(jax.device_get(leaf))))
  return out


def array_digest(tree: Any) -> dict[str, dict[str, Any]]:
  """{leaf path: {"sha256", "shape", "dtype"}} of every array in `tree`, from its host bytes."""
  return {path: {"sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
                 "shape": list(x.shape), "dtype": str(x.dtype)}
          for path, x in _host_leaves(tree)}


def workdir_path(workdir: Union[str, os.PathLike]) -> epath.Path:
  """The workdir as an epath: a URL (`gs://bucket/run`) as it is, a local path made absolute
  (Orbax needs absolute paths)."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def _sha256_file(path: epath.Path) -> str:
  h = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _files_of(step_dir: epath.Path) -> list[str]:
  step_dir = epath.Path(step_dir)
  files = [os.fspath((root / name).relative_to(step_dir))
           for root, _, names in step_dir.walk() for name in names]
  return sorted(rel for rel in files if rel != FILES_DIGEST)


class CheckpointGoneError(CorruptCheckpointError):
  """The checkpoint's directory vanished while it was read: a live run replaced it (its
  keep_checkpoints deleted the oldest). Not damage: the reader looks again."""


class Checkpoints:
  """A thin wrapper over `orbax.checkpoint.CheckpointManager` that verifies what it keeps."""

  def __init__(self, workdir: str, keep: int = 3, create: bool = True):
    self.workdir = workdir_path(workdir)
    self.directory = self.workdir / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=create))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  # ------------------------------------------------------------------------- saving

  def save(self, step: int, state: Any, extra: Optional[dict] = None) -> None:
    """Saves `state` at `step` with its digest (and `extra`, JSON, in the same metadata) and
    waits for the commit; raises CheckpointSaveError if any part of it fails."""
    metadata = None
    if jax.process_index() == 0:
      metadata = {"digest": {"format": DIGEST_FORMAT, "arrays": array_digest(state)},
                  **(extra or {})}
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=metadata)
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
      if jax.process_index() == 0:
        self._write_files_digest(step)
    except Exception as e:  # orbax and tensorstore raise many types: name the step and cause
      # The rename is the commit: past it, only rotation or files.sha256 can have failed.
      state = (f"step {step} itself was committed (a restore verifies its arrays)"
               if self.step_dir(step).is_dir() else
               "the last committed checkpoint is untouched")
      raise CheckpointSaveError(
          f"cannot save the checkpoint at step {step} in {self.directory}: "
          f"{type(e).__name__}: {' '.join(str(e).split())[:400]}; the run stopped here, "
          f"{state}") from e
    if step not in self._manager.all_steps():
      raise CheckpointSaveError(f"the checkpoint at step {step} in {self.directory} was not "
                                "committed; the run stopped here")

  def _write_files_digest(self, step: int) -> None:
    """The sha256 of every committed file, read back from disk (what a restore will read)."""
    step_dir = self.step_dir(step)
    digest = {rel: {"sha256": _sha256_file(step_dir / rel),
                    "bytes": (step_dir / rel).stat().length}
              for rel in _files_of(step_dir)}
    tmp = step_dir / (FILES_DIGEST + ".tmp")
    with tmp.open("w") as f:
      json.dump(digest, f, indent=0, sort_keys=True)
      f.flush()
      try:
        os.fsync(f.fileno())
      except (AttributeError, io.UnsupportedOperation):
        pass  # an object store's file: its close is the commit
    tmp.replace(step_dir / FILES_DIGEST)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  # ------------------------------------------------------------------------- verifying

  def stored_metadata(self, step: int) -> Optional[dict]:
    """The custom metadata saved with `step` (digest and extras); None if it has none."""
    path = self.step_dir(step) / ORBAX_METADATA
    if not path.exists():
      return None
    try:
      return json.loads(path.read_text()).get("custom_metadata") or None
    except (OSError, ValueError) as e:
      raise CorruptCheckpointError(f"step {step}: {ORBAX_METADATA} is unreadable: {e}") from None

  def _has_digests(self) -> bool:
    """Whether this workdir's checkpoints carry digests (those written before digests did not)."""
    for step in self.all_steps():
      try:
        if (self.stored_metadata(step) or {}).get("digest"):
          return True
      except CorruptCheckpointError:
        continue
    return False

  def check_files(self, step: int) -> None:
    """Raises CorruptCheckpointError naming the first missing, truncated or altered file."""
    step_dir = self.step_dir(step)
    path = step_dir / FILES_DIGEST
    if not path.exists():
      return  # a kill between the commit and this file: the array digest still checks it
    try:
      expected = json.loads(path.read_text())
    except (OSError, ValueError):
      return  # written atomically, so unreadable means damaged: the array digest decides
    for rel, want in sorted(expected.items()):
      full = step_dir / rel
      if not full.exists():
        raise CorruptCheckpointError(f"step {step}: file {rel} is missing")
      size = full.stat().length
      if size != want["bytes"]:
        raise CorruptCheckpointError(
            f"step {step}: file {rel} has {size} bytes, {want['bytes']} were written")
      if _sha256_file(full) != want["sha256"]:
        raise CorruptCheckpointError(f"step {step}: file {rel} does not match its sha256")

  def restore(self, target: Any, step: Optional[int] = None, *, verify: bool = True,
              require_digest: Optional[bool] = None) -> Any:
    """Restores `step` (the latest by default) with the structure, dtypes and shardings of
    `target` (a state or its abstract shapes), checked against its digests."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if not self.step_dir(step).is_dir():
      raise CheckpointGoneError(f"step {step}: {self.step_dir(step)} is gone")
    try:
      return self._restore_present(target, step, verify, require_digest)
    except (CheckpointError, OSError):
      if not self.step_dir(step).is_dir():  # deleted under the read, not damaged
        raise CheckpointGoneError(f"step {step}: {self.step_dir(step)} was deleted while it "
                                  "was read") from None
      raise

  def _restore_present(self, target: Any, step: int, verify: bool,
                       require_digest: Optional[bool]) -> Any:
    metadata = self.stored_metadata(step) if verify else None
    digest = (metadata or {}).get("digest")
    if verify and digest is None:
      if require_digest is None:
        require_digest = self._has_digests()
      if require_digest:
        raise CorruptCheckpointError(
            f"step {step}: incomplete: {ORBAX_METADATA} is missing or holds no digest")
      print(f"warning: the checkpoint at step {step} has no digest (written before digests "
            "were kept); restored unverified", file=sys.stderr, flush=True)
    if digest is not None:
      self._check_structure(step, digest, target)
      self.check_files(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types; name the checkpoint and the cause
      cause = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
      if digest is not None:  # the structure matched the digest: the files are damaged
        raise CorruptCheckpointError(f"step {step}: Orbax cannot read it: {cause}") from e
      raise CheckpointError(
          f"cannot restore the checkpoint at step {step} in {self.directory} into this run "
          f"(was it written by a different model or config?): {cause}") from e
    if digest is not None:
      got = array_digest(state)
      for path, want in digest["arrays"].items():
        if got[path]["sha256"] != want["sha256"]:
          raise CorruptCheckpointError(
              f"step {step}: array {path} does not match its digest (files under "
              f"{self.step_dir(step)}/default)")
    return state

  def _check_structure(self, step: int, digest: dict, target: Any) -> None:
    """A digest of other arrays means another model or config, not damage."""
    want = {p: (tuple(d["shape"]), d["dtype"]) for p, d in digest["arrays"].items()}
    have = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
      shape, dtype = tuple(leaf.shape), leaf.dtype
      if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        shape, dtype = tuple(jax.random.key_data(leaf).shape), jax.random.key_data(leaf).dtype
      have[jax.tree_util.keystr(path)] = (shape, str(np.dtype(dtype)))
    if want != have:
      diff = sorted(set(want.items()) ^ set(have.items()))[:3]
      raise CheckpointError(
          f"cannot restore the checkpoint at step {step} in {self.directory} into this run: "
          f"it holds other arrays (was it written by a different model or config?), e.g. "
          f"{', '.join(f'{p} {s}' for p, s in diff)}")

  def restore_latest_intact(self, target: Any, *, move_aside: bool) -> Any:
    """The newest checkpoint that passes its digests. Each bad one is reported on stderr by step
    and file; if an older one is intact it is restored (and, with `move_aside`, the bad ones are
    moved to DIR/corrupt_checkpoints/ so that the run can write those steps again). With none
    intact, CorruptCheckpointError names them all and nothing is moved.

    With several processes and `move_aside`, every process must call this: process 0 moves the
    bad ones only once every process has read its checkpoint, and every process lists the
    steps again afterwards (else its Orbax would still count a moved step as saved, skip the
    next save of that step, and leave process 0 waiting for it inside the save)."""
    for attempt in range(GONE_RETRIES):
      try:
        state, step, bad = self._restore_latest_intact(target)
        break
      except CheckpointGoneError:
        if attempt == GONE_RETRIES - 1:
          raise
        self._manager.reload()  # a live run replaced the checkpoint: list them again
    several = move_aside and jax.process_count() > 1
    if several:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("flow_maps: checkpoints read")
    where = ""
    if bad and move_aside and jax.process_index() == 0:
      aside = self.workdir / "corrupt_checkpoints"
      aside.mkdir(parents=True, exist_ok=True)
      for s, _ in bad:
        dest = aside / str(s)
        n = 1
        while dest.exists():
          dest, n = aside / f"{s}.{n}", n + 1
        self.step_dir(s).rename(dest)
      where = f"; moved {'them' if len(bad) > 1 else 'it'} to {aside}"
    if several:
      multihost_utils.sync_global_devices("flow_maps: corrupt checkpoints moved aside")
    if bad and move_aside:
      self._manager.reload()
    if bad:
      print(f"falling back to the newest intact checkpoint, step {step} (step"
            f"{'s' if len(bad) > 1 else ''} {', '.join(str(s) for s, _ in bad)} "
            f"failed verification{where})", file=sys.stderr, flush=True)
    return state

  def _restore_latest_intact(self, target: Any) -> tuple[Any, int, list[tuple[int, str]]]:
    """(state, its step, [(step, problem)] of the newer ones that failed), moving nothing."""
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    require_digest = self._has_digests()
    bad = []
    for step in reversed(steps):
      try:
        state = self.restore(target, step, require_digest=require_digest)
      except CheckpointGoneError:
        raise
      except CorruptCheckpointError as e:
        print(f"checkpoint error: {e}", file=sys.stderr, flush=True)
        bad.append((step, str(e)))
        continue
      return state, step, bad
    raise CorruptCheckpointError(
        f"no intact checkpoint in {self.directory}: " + "; ".join(m for _, m in bad) +
        ". Nothing was changed")

  def verify(self, target: Any, step: int) -> Optional[str]:
    """None if `step` passes its digests, else what is wrong."""
    try:
      self.restore(target, step)
    except CheckpointError as e:
      return str(e)
    return None

  def restore_raw(self, step: int) -> Any:
    """The checkpoint at `step` as saved (nested dicts and lists of host arrays), without a target:
    for reading another run's weights (`pretrained.py`)."""
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # orbax raises many types; name the checkpoint and the cause
      raise CheckpointError(f"cannot read the checkpoint at step {step} in {self.directory}: "
                            f"{type(e).__name__}: {e}") from e

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
