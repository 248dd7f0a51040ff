"""One command-line style for every entry point: user mistakes end in one line, not a traceback.

  from swa import cli
  ...
  if __name__ == "__main__":
    cli.run(main)

`run(main)` is `absl.app.run(main)` with one difference: a user mistake (a bad flag or config
override, a config file that does not load, a `ValueError`, a missing file, a `UserError`, or a
NaN stop) prints one line `error: <message>` on stderr and exits with status 1. `--debug` (defined
here) or the environment variable `SWA_DEBUG=1` shows the full traceback instead. Any other
exception is a bug and keeps its traceback.
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

_DEBUG = flags.DEFINE_bool(
  "debug",
  False,
  "Show the full traceback of an error instead of the "
  "one-line message (also: environment variable SWA_DEBUG=1).",
)


class UserError(Exception):
  """A mistake in what the user asked for; its message is the whole story (no traceback)."""


# Exceptions whose message is enough for the user: printed as one line, without a traceback.
# FloatingPointError is the training loop's NaN stop (swa/train_lib.py).
ONE_LINE_ERRORS = (
  UserError,
  ValueError,
  FileNotFoundError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
  FileExistsError,
  FloatingPointError,
)


def parse_length(text: str) -> int:
  """'4M' -> 4 * 2**20, '256k' -> 256 * 2**10, '1000' -> 1000."""
  units = {"k": 2**10, "m": 2**20, "g": 2**30}
  text = text.strip().lower()
  try:
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
  except (ValueError, IndexError):
    raise ValueError(f"length={text!r} is not a length; use e.g. 262144, 256k or 4M.") from None


def debug_requested(argv=None) -> bool:
  """True if the user asked for full tracebacks: --debug, or SWA_DEBUG set to 1/true/yes."""
  if os.environ.get("SWA_DEBUG", "").strip().lower() in ("1", "true", "yes"):
    return True
  if flags.FLAGS.is_parsed() and _DEBUG.value:
    return True
  # The flags may not have parsed (the error may be in them): look at the raw arguments.
  return any(
    a in ("--debug", "--debug=true", "--debug=True", "--debug=1")
    for a in (sys.argv if argv is None else argv)
  )


def one_line(message: str) -> str:
  """The message on one line: its non-empty lines joined, surrounding whitespace stripped."""
  return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def error_message(error: BaseException) -> str:
  """The one-line text shown for `error` (without the `error: ` prefix)."""
  # AttributeError(KeyError(...)) from a locked ConfigDict: unwrap to the innermost message.
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
    text = error.args[0]  # str(KeyError) would quote and escape it ('\'x\'\nDid you mean ...').
  else:
    text = str(error)
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    text = f"{error.strerror}: {error.filename}"  # not "[Errno 2] No such file ...: 'x'"
  return one_line(text) or type(error).__name__


def _describe_config_failure(name, path, failure) -> str:
  """One line for a config file that did not load: the flag and the path as the user gave them."""
  if not path:
    return f"--{name}: the path to the config file is empty."
  if not os.path.exists(path):
    return f"--{name}: config file not found: {path}"
  reason = [line.strip() for line in str(failure).splitlines() if line.strip()][-1]
  return f"--{name}: could not load config file {path}: {reason}"


# config_flags' message for a file that did not load ('Failed loading config file config_config',
# then '  Attempted [Relative path]:' and the path on the next line).
_LOAD_FAILURE = re.compile(
  r"Failed loading config file (\S+)_config\s.*?Attempted \[[^\]]*\]:\n"
  r"\s*(.*?)\n",
  re.S,
)


def _config_load_error(flag_values, error=None) -> "str | None":
  """One line naming the path the user gave, if a config-file flag failed to load its file."""
  for name in flag_values:
    flag = flag_values[name]
    try:
      path = config_flags.get_config_filename(flag)
    except Exception:  # pylint: disable=broad-except  # Not a config flag, or not parsed yet.
      continue
    failure = getattr(flag.value, "_error", None)  # config_flags' stand-in for a failed load
    if path is not None and isinstance(failure, OSError):
      return _describe_config_failure(name, path.split(":", 1)[0], failure)
  # With overrides on the command line, the load fails inside the flag's parsing: read the message.
  while error is not None:
    match = _LOAD_FAILURE.search(str(error)) if isinstance(error, OSError) else None
    if match:
      return _describe_config_failure(
        match.group(1), match.group(2).strip().split(":", 1)[0], error
      )
    error = error.__cause__
  return None


def _unknown_field_message(error: BaseException, argv) -> "str | None":
  """For a misspelt config field, the override as given and config_dict's "Did you mean" hint.

  E.g. '--config.model.windw_size=3: the config has no field 'windw_size'; Did you mean
  "window_size" instead of "windw_size"?'. None if `error` is not a missing-field KeyError.
  """
  inner = error
  while inner.args and isinstance(inner.args[0], BaseException):
    inner = inner.args[0]
  if not isinstance(inner, KeyError) or not inner.args or not isinstance(inner.args[0], str):
    return None
  lines = inner.args[0].splitlines()
  field = lines[0].strip("'\"")
  given = [a for a in argv if a.startswith("--") and re.search(rf"\.{re.escape(field)}(=|\.|$)", a)]
  where = given[0] if given else field
  hint = "; " + one_line(" ".join(lines[1:])) if len(lines) > 1 else ""
  return f"{where}: the config has no field {field!r}{hint}"


def _flags_error_message(error: flags.Error) -> str:
  """absl's flag error on one line; a config file's own traceback reduced to its last line."""
  text = str(error)
  if "Traceback (most recent call last)" in text:
    head = text.split("Error whilst parsing config file", 1)[0].rstrip(": \n")
    last = [line.strip() for line in text.splitlines() if line.strip()][-1]
    text = f"{head}: {last}" if head else last
  return one_line(text)


def _no_get_config_message(error: BaseException, argv) -> "str | None":
  """'--config=x.py: the file defines no get_config()' for a config file without that function."""
  if not (isinstance(error, AttributeError) and "has no attribute 'get_config'" in str(error)):
    return None
  for arg in argv:
    flag, _, value = arg.partition("=")
    if flag.startswith("--") and value.split(":", 1)[0].endswith(".py"):
      return f"{flag}={value}: the file defines no get_config() function."
  return None


def _in_file_message(error: BaseException, argv) -> str:
  """'--config=x.py: NameError: ...' when the error comes from a file named on the command line."""
  frames, tb = set(), error.__traceback__
  while tb is not None:
    frames.add(os.path.abspath(tb.tb_frame.f_code.co_filename))
    tb = tb.tb_next
  text = f"{type(error).__name__}: {error_message(error)}"
  for arg in argv:
    flag, _, value = arg.partition("=")
    if flag.startswith("--") and value and os.path.abspath(value.split(":", 1)[0]) in frames:
      return f"{flag}={value}: {text}"
  return text


def parse_flags(argv):
  """absl's flag parsing, with every failure turned into a one-line `UserError`.

  A misspelt config field, an unparsable value, a missing or broken config file and absl's own
  flag errors all end here. Returns the arguments left for `main`, as `app.run` expects.
  """
  try:
    remaining = flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except
    if debug_requested(argv):
      raise
    message = (
      _config_load_error(flags.FLAGS, error)
      or _unknown_field_message(error, argv)
      or (_flags_error_message(error) if isinstance(error, flags.Error) else None)
      or _no_get_config_message(error, argv)
      or _in_file_message(error, argv)
    )
    raise UserError(message) from error
  message = _config_load_error(flags.FLAGS)
  if message is not None and not debug_requested(argv):
    raise UserError(message)
  return remaining


def run(main, argv=None):
  """Runs an absl `main(argv)`; user mistakes end in one line on stderr and exit status 1.

  Args:
    main: the entry point's main function, as for `absl.app.run`.
    argv: the command line (default sys.argv).
  """

  def guarded_main(args):
    try:
      return main(args)
    except app.UsageError as error:  # absl would print the whole flag help.
      raise UserError(str(error)) from error

  try:
    app.run(guarded_main, argv=argv, flags_parser=parse_flags)
  except ONE_LINE_ERRORS as error:
    if debug_requested(argv):
      raise
    sys.stdout.flush()
    print(f"error: {error_message(error)}", file=sys.stderr, flush=True)
    sys.exit(1)
  except KeyboardInterrupt:
    if debug_requested(argv):
      raise
    sys.stdout.flush()
    print("error: interrupted", file=sys.stderr, flush=True)
    sys.exit(130)
