"""Small helpers every module shares: value checks with one message format, atomic file writes, and the
first line of an exception for one-sentence errors.

The one message format for an invalid value is ``<key>=<value!r> is invalid; allowed: <what is allowed>``,
where ``<key>`` names the setting the way a person writes it (``momentum.beta1_start``, ``weighting.lam``,
``sampler parameter clusters``).
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


# -- value checks ------------------------------------------------------------------------------------------
def is_int(v: Any, *, exact: bool = True) -> bool:
    """True for an integer that is not a ``bool`` (``True`` is an int in Python, but ``channels: true`` in a YAML
    file is a mistake, not 1). ``exact``: a Python ``int`` only; else any :class:`numbers.Integral` (NumPy's)."""
    kind = int if exact else numbers.Integral
    return isinstance(v, kind) and not isinstance(v, bool)


def is_number(v: Any, *, exact: bool = True) -> bool:
    """True for a finite number that is not a ``bool``. ``exact``: a Python ``int`` or ``float`` only; else any
    :class:`numbers.Real` (NumPy's too)."""
    kinds = (int, float) if exact else numbers.Real
    if not isinstance(v, kinds) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float (10**400) is not a finite number here
        return False


def invalid(key: str, value: Any, allowed: str) -> str:
    """The one sentence for an invalid value: ``<key>=<value!r> is invalid; allowed: <allowed>``."""
    return f"{key}={value!r} is invalid; allowed: {allowed}"


def check_value(key: str, value: Any, ok: bool, allowed: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` (default ``ValueError``) with :func:`invalid`'s sentence unless ``ok``."""
    if not ok:
        raise error(invalid(key, value, allowed))


def checker(prefix: str, error: type[Exception] = ValueError) -> Callable[[str, Any, bool, str], None]:
    """A ``check(name, value, ok, allowed)`` for one section: ``checker("momentum.")`` raises
    "momentum.<name>=<value> is invalid; allowed: ..." unless ``ok``."""

    def check(name: str, value: Any, ok: bool, allowed: str) -> None:
        check_value(f"{prefix}{name}", value, ok, allowed, error)

    check.__doc__ = (
        f"Raise {error.__name__} naming ``{prefix}<name>``, its value and what is allowed, unless ``ok``."
    )
    return check


def suggest(name: str, allowed) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, allowed) -> str:
    """One sentence for an unknown name: what was given, what is allowed, the nearest match."""
    allowed = list(allowed)
    return f"{kind}={name!r} is not known{suggest(name, allowed)}; allowed: {', '.join(map(str, allowed))}"


def check_params(
    section: str, owner: str, fn, params, skip=("self",), section_keys=("name",), unlisted=()
) -> list[str]:
    """Raise ``ValueError`` for a config parameter that ``fn``'s signature does not take, as
    "<section>.<key> is not a parameter of <owner> (did you mean X?); allowed: ..."; return the allowed names.
    The nearest match is looked for among the parameters and ``section_keys``, the keys the section holds
    besides them (``sampler.nme`` is a misspelt ``name``). ``unlisted`` parameters are taken but neither listed
    nor suggested: ones the caller sets itself (a sampler's ``total_steps``, which the trainer plans)."""
    taken = [p for p in inspect.signature(fn).parameters if p not in skip]
    allowed = [p for p in taken if p not in unlisted]
    for k in params:
        if k not in taken:
            raise ValueError(
                f"{section}.{k} is not a parameter of {owner}{suggest(k, [*section_keys, *allowed])}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
    return allowed


def check_param(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ``ValueError`` naming a sampler parameter, its value and what is allowed, unless ``ok``:
    "sampler parameter <name>=<value> is invalid; allowed: ..."."""
    check_value(f"sampler parameter {name}", value, ok, allowed)


# -- errors --------------------------------------------------------------------------------------------------
def first_line(e: BaseException, limit: int = 500) -> str:
    """The first line of an exception's message (a torch error can run to many), or its class name when the
    message is empty; cut to ``limit`` characters, the cut marked by "...". For one-sentence errors."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- atomic writes -------------------------------------------------------------------------------------------
def _umask() -> int:
    """The process's umask, read without changing it where the system allows (``/proc/self/status`` on
    Linux): setting it to read it, as ``os.umask`` must, would briefly change it for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give the file ``path`` the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask).

    For every file the library writes by another route than ``open``: :func:`tempfile.mkstemp` creates its
    file ``0o600``, and some writers (safetensors' ``save_file``) replace the file they are given with one of
    their own, private mode."""
    os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is renamed over ``path`` (a rename is
    atomic, so a crash leaves the old file or the new one, never half of one), on an error it is removed.

    The file gets the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask,
    :func:`honour_umask`), set after the writer is done, so neither the ``0o600`` of :func:`tempfile.mkstemp`
    nor a writer that recreates the file (PIL, matplotlib, safetensors) decides them. ``path``'s folder is
    created if missing. ``suffix`` is the temporary name's ending, for writers that choose a format by it
    (``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        honour_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8, or bytes) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
