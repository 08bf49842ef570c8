"""Error types of the core. Every message names the problem and what to change."""


class InputError(ValueError):
    """Bad input found before any work starts (unknown name, bad value, missing or corrupt file)."""


class NonFiniteError(FloatingPointError):
    """A weight, direction or metric product became NaN or Inf during a computation."""
