"""Errors a run reports to its user (the CLI prints them as one line; see `cli`)."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient; nothing of that state was saved."""
