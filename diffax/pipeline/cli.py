"""The command line's contract: a user's mistake is one line on stderr and a non-zero exit.

Scripts call `run(main)` instead of `absl.app.run(main)`. Errors that mean "bad input" (a bad
config value, a missing workdir or file, a corrupt checkpoint, a failed save, a non-finite loss)
print `error: <message>` on one line and exit 1, without a traceback; `--debug` shows it. Any
other exception is a bug and keeps its traceback. Flag errors (an unknown flag, a misspelt
config field, an unknown config variant) are reported the same way.
"""

import re
import sys

from absl import app
from absl import flags
from absl import logging

from diffax.pipeline import checkpoint
from diffax.pipeline import errors

_DEBUG = flags.DEFINE_bool("debug", False, "On an error, show the Python traceback too.")

# Exceptions that report bad input (or a fault the user must fix), not a bug in diffax.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, app.UsageError,
               checkpoint.CheckpointSaveError, errors.NonFiniteLossError)


def one_line(error: BaseException) -> str:
  """The error's message on one line (later lines joined with ' | ')."""
  text = str(error).strip() or type(error).__name__
  return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def fail(message: str) -> None:
  """Prints `error: message` on stderr and exits 1."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def _flag_error(error: Exception, argv) -> str:
  """One line for an error raised while parsing the flags."""
  if isinstance(error, (KeyError, AttributeError)):  # a --config.<path> that does not exist
    text = str(error)
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    names = re.findall(r"[A-Za-z_]\w*", text.replace("\\n", " "))
    given = [(n, flag) for n in names for flag in overrides if n in flag.split(".")[1:]]
    key, flag = given[0] if given else ("?", "a --config. flag")
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
    return (f"unknown config field {key!r} in {flag}{hint} (configs are locked, so a "
            f"misspelt field fails)")
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):  # an error inside get_config()
    flag = lines[0].partition(": Error whilst")[0]
    return f"{flag}: {lines[-1]}"
  return f"{one_line(error)} (see --helpfull)"


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError) as e:
    if "--debug" in argv:
      raise
    fail(_flag_error(e, argv))
  return None


def run(main) -> None:
  """`absl.app.run(main)` with one-line errors for bad input (see the module docstring)."""

  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; -v 0 shows it
    try:
      main(argv)
    except USER_ERRORS as e:
      if _DEBUG.value:
        raise
      fail(f"{one_line(e)} (--debug shows the traceback)")

  app.run(guarded, flags_parser=_parse_flags)
