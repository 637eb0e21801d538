"""The command line's guard rails, set up by `main.py` before anything heavy is imported.

- Bad input is one line on stderr and exit code 2, never a traceback: the config file and its
  variant are loaded and the override names checked here (with the nearest valid names), and
  every absl flag error is reworded to one line.
- SIGTERM and SIGINT at any moment exit 143 / 130 without a traceback: outside the training loop
  they raise `Stopped` (the loop turns them into a flag and saves a checkpoint first).
- A closed stdout (`... | head -1`) does not kill the run: progress printing is dropped.

This module imports nothing beyond the standard library and absl, so that it works before jax.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import os
import signal
import sys
from typing import Any, Callable, Optional

EXIT_BAD_INPUT = 2


class Stopped(BaseException):
  """SIGTERM or SIGINT outside the training loop (a BaseException, like KeyboardInterrupt, so
  that no `except Exception` swallows it)."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


# The last signal received: a raise from a signal handler that lands in a gc callback or a
# __del__ is swallowed by the interpreter, so `run.py` checks this at the end as well.
received: Optional[int] = None


# Until `running()` (the start of `run.run`) nothing has been written: a signal then ends the
# process at once. Raising instead would unwind whatever import was under way (jaxlib's among
# them), and tearing down a half-initialised extension module can crash the interpreter
# (seen: SIGSEGV for a SIGTERM 0.5 s into start-up).
_starting = True


def running() -> None:
  """From now on a signal raises `Stopped`, for the run to save what it must and stop."""
  global _starting
  _starting = False


def _raise_stopped(signum, frame):
  del frame
  global received
  received = signum
  if _starting:
    try:
      print(stop_message(signum, "while starting"), file=sys.stderr, flush=True)
    finally:
      os._exit(128 + signum)
  raise Stopped(signum)


def _excepthook(kind, value, tb):
  """A `Stopped` that nothing caught (a signal during the imports): one line, 128 + signal."""
  if not isinstance(value, Stopped):
    return _previous_excepthook(kind, value, tb)
  print(stop_message(value.signum, "while starting"), file=sys.stderr, flush=True)
  try:
    sys.stdout.flush()
  except Exception:  # stdout may be gone; the exit code is what matters here
    pass
  os._exit(128 + value.signum)


_previous_excepthook = sys.excepthook


def _unraisablehook(unraisable):
  """A `Stopped` raised inside a gc callback or __del__ cannot propagate; `received` keeps the
  signal, so print nothing (the interpreter would print a traceback)."""
  if isinstance(unraisable.exc_value, Stopped):
    return
  _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def install_signal_handlers() -> None:
  """SIGTERM / SIGINT raise `Stopped`; SIGPIPE is ignored (a write to a closed pipe raises
  BrokenPipeError, which `PipeSafeStream` swallows)."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _raise_stopped)
  signal.signal(signal.SIGPIPE, signal.SIG_IGN)
  sys.excepthook = _excepthook
  sys.unraisablehook = _unraisablehook


def stop_message(signum: int, what: str) -> str:
  return f"stopped by {signal.Signals(signum).name} {what}"


class PipeSafeStream:
  """A text stream whose writes to a closed pipe are dropped instead of raised: once the reader
  has gone, the file descriptor is pointed at /dev/null (so the interpreter's final flush cannot
  fail either) and a note goes to stderr. Everything else is the wrapped stream's."""

  def __init__(self, stream):
    self._stream = stream
    self._broken = False

  def _closed_pipe(self) -> None:
    self._broken = True
    try:
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, self._stream.fileno())
      os.close(devnull)
    except (OSError, ValueError):
      pass
    try:
      print("note: stdout was closed; progress is no longer printed (the run goes on; "
            "metrics.jsonl has every logged step)", file=sys.stderr, flush=True)
    except OSError:
      pass

  def _guarded(self, call: Callable[[], Any], default: Any) -> Any:
    if self._broken:
      return default
    try:
      return call()
    except OSError as e:
      if not isinstance(e, BrokenPipeError) and e.errno != errno.EPIPE:
        raise
      self._closed_pipe()
      return default

  def write(self, text: str) -> int:
    return self._guarded(lambda: self._stream.write(text), len(text))

  def flush(self) -> None:
    self._guarded(self._stream.flush, None)

  def __getattr__(self, name: str) -> Any:
    return getattr(self._stream, name)


# --------------------------------------------------------------------------- bad input


class InputError(Exception):
  """Bad command-line input; the message is one line that starts with its kind."""


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def fail(message: str) -> None:
  """Prints one line on stderr and exits with code 2."""
  print(_one_line(message), file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


def _flag_value(argv: list[str], name: str) -> Optional[str]:
  """The last value given to --name (or -name) in argv, in either `--name=v` or `--name v`."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _override_names(argv: list[str], flag: str) -> list[str]:
  """The dotted field paths overridden with --flag.a.b=v (or --noflag.a.b for booleans)."""
  names = []
  for arg in argv[1:]:
    if arg == "--":
      break
    name = arg.lstrip("-").split("=", 1)[0]
    if not arg.startswith("-") or name == flag:
      continue
    for prefix in (f"{flag}.", f"no{flag}."):
      if name.startswith(prefix):
        names.append(name[len(prefix):])
        break
  return names


def field_paths(config) -> list[str]:
  """Every leaf field of a ConfigDict as a dotted path."""
  import ml_collections
  paths = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      paths += [f"{key}.{p}" for p in field_paths(value)]
    else:
      paths.append(key)
  return paths


def unknown_field_message(path: str, config, where: str) -> Optional[str]:
  """None if `path` (a.b.c, indices as a.b[0] allowed) names a field of `config`, else a
  one-line message that names the field and the nearest valid ones."""
  import ml_collections
  node = config
  parts = path.split(".")
  for depth, part in enumerate(parts):
    key = part.split("[", 1)[0]
    if isinstance(node, ml_collections.ConfigDict) and key in node:
      node = node[key]
      continue
    known = field_paths(config)
    near = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
    if near:
      hint = "nearest: " + ", ".join(near)
    else:
      section = ".".join(parts[:depth])
      names = sorted(p for p in known if p.startswith(section + ".")) if section else \
          sorted(config.keys())
      hint = f"fields of {section or 'the config'}: " + ", ".join(names)
    return f"config error: {where}: no field {path!r}; {hint}"
  return None


def load_config(argument: str):
  """Loads `path[:argument]` as ml_collections' config flag does (the module's `get_config`,
  called with the text after the first colon if there is one: a variant, `demo`, for a
  per-experiment file; `key=value,...` for a dataset file, read by `config_defaults.parse_arg`);
  raises InputError with one line naming the file and the problem."""
  import ml_collections
  path, colon, variant = argument.partition(":")
  args = (variant,) if colon else ()
  if not path:
    raise InputError("config error: --config is empty; give a config file, e.g. "
                     "--config=configs/checkerboard_lsd.py")
  if not os.path.isfile(path):
    kind = "is a directory, not a config file" if os.path.isdir(path) else "does not exist"
    raise InputError(f"config error: {path}: the config file {kind}")
  try:
    with open(path, encoding="utf-8") as f:
      source = f.read()
    compile(source, path, "exec")
  except SyntaxError as e:
    raise InputError(f"config error: {path}:{e.lineno}: syntax error: {e.msg}") from None
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise InputError(f"config error: {path}: cannot read it: {e}") from None
  try:
    spec = importlib.util.spec_from_file_location("_flow_maps_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # a config file may raise anything while importing
    raise InputError(f"config error: {path}: importing it failed: {type(e).__name__}: "
                     f"{_one_line(e)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise InputError(f"config error: {path}: defines no get_config() function")
  from flow_maps.config_defaults import ArgumentError  # light: ml_collections alone
  try:
    config = module.get_config(*args)
  except ArgumentError as e:  # `configs/<dataset>.py:key=value,...`: an argument it does not take
    raise InputError(f"config error: {path}: {_one_line(e)}") from None
  except Exception as e:  # the variant's own check, or any bug in the file
    raise InputError(f"config error: {argument}: get_config({', '.join(map(repr, args))}) "
                     f"failed: {type(e).__name__}: {_one_line(e)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"config error: {argument}: get_config() returned "
                     f"{type(config).__name__}, not an ml_collections.ConfigDict")
  return config


def check_config_arguments(argv: list[str], flag: str = "config") -> None:
  """The config file, its variant and every overridden field name, before absl parses them."""
  argument = _flag_value(argv, flag)
  if argument is None:
    return  # absl reports the missing required flag
  config = load_config(argument)
  for path in _override_names(argv, flag):
    message = unknown_field_message(path, config, argument)
    if message:
      raise InputError(message)


def flags_parser(config_flag: str = "config") -> Callable[[list[str]], list[str]]:
  """A `flags_parser` for `absl.app.run`: absl's parsing, with every error one line on stderr
  and exit code 2 (absl's own parser exits 1 with a usage hint)."""

  def parse(argv: list[str]) -> list[str]:
    from absl import flags
    try:
      check_config_arguments(argv, config_flag)
      return flags.FLAGS(argv)
    except InputError as e:
      fail(str(e))
    except flags.Error as e:
      message = _one_line(e)
      if f"--{config_flag}." in message:  # a value of the wrong type for a config field
        fail(f"config error: {_flag_value(argv, config_flag)}: {message}")
      fail(f"flag error: {message}")

  return parse


def check_workdir(workdir: str) -> None:
  if not workdir.strip():
    raise InputError("flag error: --workdir is empty")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"workdir error: {workdir} exists and is not a directory")


def initialize_distributed() -> None:
  """`jax.distributed.initialize` for --distributed. TPU pods and SLURM are detected by jax
  itself; elsewhere JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID give the cluster (jax reads only the first of them)."""
  import jax
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(v)]
    if missing:
      fail(f"flag error: --distributed with JAX_COORDINATOR_ADDRESS also needs "
           f"{' and '.join(missing)}")
    try:
      kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                    process_id=int(os.environ["JAX_PROCESS_ID"]))
    except ValueError as e:
      fail(f"flag error: --distributed: JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers "
           f"({e})")
  # Cross-process collectives of the CPU backend (it has none by default); accelerators keep
  # their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
