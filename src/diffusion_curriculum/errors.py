"""The errors a person sees as one sentence (the CLI prints them and exits with status 2, or 1 for a
:class:`TrainingError`).

Every class but :class:`TrainingError` is a ``ValueError`` so library users can catch them the ordinary way. The sentence builders
(:func:`suggest`, :func:`unknown`, :func:`check_params`) live in :mod:`diffusion_curriculum.checks` and are
importable from here too.
"""

from __future__ import annotations

from .checks import check_params, suggest, unknown

__all__ = ["ConfigError", "Interrupted", "TrainingError", "check_params", "suggest", "unknown"]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key, the value and what is allowed."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message names the step and what was kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM at a step boundary; the trainer has already said what it saved
    (the message). A ``KeyboardInterrupt``, so code that catches that still does."""
