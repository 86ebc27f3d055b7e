"""The errors a person sees as one sentence (the CLI prints them and exits with status 2).

Every class is a ``ValueError`` so library users can catch them the ordinary way.
"""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key, the value and what is allowed."""


def suggest(name: str, allowed) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, allowed) -> str:
    """One sentence for an unknown name: what was given, what is allowed, the nearest match."""
    allowed = list(allowed)
    return f"{kind}={name!r} is not known{suggest(name, allowed)}; allowed: {', '.join(map(str, allowed))}"


def check_params(section: str, owner: str, fn, params, skip=("self",)) -> list[str]:
    """Raise ``ValueError`` for a config parameter that ``fn``'s signature does not take, as
    "<section>.<key> is not a parameter of <owner> (did you mean X?); allowed: ..."; return the allowed names."""
    import inspect

    allowed = [p for p in inspect.signature(fn).parameters if p not in skip]
    for k in params:
        if k not in allowed:
            raise ValueError(
                f"{section}.{k} is not a parameter of {owner}{suggest(k, allowed)}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
    return allowed
