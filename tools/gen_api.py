"""Write docs/API.md: every public module, class and function of ``diffusion_curriculum`` with its signature and
docstring (the same objects ``tests/test_docstrings.py`` requires docstrings for).

    PYTHONPATH=src python tools/gen_api.py          # writes docs/API.md
    PYTHONPATH=src python tools/gen_api.py --check  # exit 1 if docs/API.md is out of date
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import diffusion_curriculum

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "API.md"


def public_modules() -> list:
    """The package and its submodules, except private ones (a name part starting with ``_``)."""
    names = [diffusion_curriculum.__name__]
    for m in pkgutil.walk_packages(diffusion_curriculum.__path__, diffusion_curriculum.__name__ + "."):
        if not any(part.startswith("_") for part in m.name.split(".")[1:]):
            names.append(m.name)
    return [importlib.import_module(n) for n in sorted(names)]


def public_objects():
    """(qualified name, object) for each public module, and each public function, class and method defined in
    it; a method that overrides a documented base-class method is left out (it inherits the docstring)."""
    for mod in public_modules():
        yield mod.__name__, mod
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{mod.__name__}.{name}", obj
                for mname, meth in vars(obj).items():
                    if mname.startswith("_") or not (inspect.isfunction(meth) or isinstance(meth, property)):
                        continue
                    if meth.__doc__ is None and inspect.getdoc(getattr(obj, mname)):
                        continue
                    yield f"{mod.__name__}.{name}.{mname}", meth


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def render() -> str:
    """docs/API.md's text."""
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `PYTHONPATH=src python tools/gen_api.py`; do not edit by hand.",
        "",
    ]
    for qual, obj in public_objects():
        doc = inspect.getdoc(obj) or ""
        if inspect.ismodule(obj):
            out += [f"## `{qual}`", "", doc, ""]
            continue
        kind = "class" if inspect.isclass(obj) else "property" if isinstance(obj, property) else "def"
        sig = "" if kind == "property" else _signature(obj)
        out += [f"### {kind} `{qual}{sig}`", "", doc, ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/API.md differs from the code")
    args = ap.parse_args()
    text = render()
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print("docs/API.md is up to date" if same else "docs/API.md is out of date: run tools/gen_api.py")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
