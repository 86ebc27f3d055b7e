"""Configuration: one YAML mapping; presets are such files; ``key=value`` arguments override it with dotted keys.

The schema below is the whole set of keys. Sections whose parameters depend on a chosen name (``dataset``,
``model``, ``process``, ``sampler``, ``weighting``, ``momentum``) are checked by the builder of that name,
which names an unknown parameter the same way. Every problem raises :class:`ConfigError` with one sentence that
names the key, the value and what is allowed — before anything is written.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .checks import first_line, invalid, is_int, is_number, suggest
from .errors import ConfigError

# Sections whose content is {name: ..., <that name's parameters>}; a bare string is shorthand for {name: value}.
NAMED_SECTIONS = ("dataset", "model", "process", "sampler", "weighting", "noise")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "steps": 4000,
    "batch_size": 128,
    "accumulate": 1,
    "lr": 1e-3,
    "prediction": "eps",
    "dataset": {"name": "digits"},
    "model": {
        "name": "unet",
        "channels": 16,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": "auto",  # the lowest level: [4] for the 8x8 digits, [8] for 16x16 images
        "groups": 8,
    },
    "process": {"name": "linear", "T": 1000},
    "sampler": {"name": "uniform"},
    "weighting": {"name": "none"},
    "noise": {"name": "gaussian"},
    "momentum": {"enabled": False},
    "cond": {"enabled": False, "drop_prob": 0.1},
    "optim": {
        "weight_decay": 0.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "grad_clip": 1.0,
        "warmup_steps": 0,
        "schedule": "constant",
    },
    "ema": {"decay": 0.999, "warmup": 10},
    "eval": {
        "samples": 1000,
        "method": "auto",
        "steps": 50,
        "eta": 0.0,
        "seed": 12345,
        "batch_size": 500,
        "seeding": "per-chunk",
        "clip": "auto",
        "guidance": 1.0,
        "val_buckets": 20,
        "val_per_bucket": 32,
    },
    "metrics": {"enabled": True, "n_real": None, "inception_weights": None},
    "eval_every": 1000,
    "checkpoint_every": 1000,
    "keep_checkpoints": 3,
    "log_every": 50,
    "device": "auto",
    "precision": "auto",
    "cudnn_benchmark": False,
    "on_nonfinite": "error",
    "logger": "none",
    "tensorboard": False,
    "progress": True,
}

MAX_INT = 10**12


def _int(lo: int | None = None, hi: int = MAX_INT):
    def check(v):
        ok = is_int(v) and (lo is None or v >= lo) and v <= hi
        return ok, f"an integer in [{lo}, {hi}]" if lo is not None else f"an integer <= {hi}"

    check.integer = True  # an integral float (steps=1e3) is taken as this integer (see _check_section)
    return check


def _as_int(v: Any) -> Any:
    """``1000.0`` (as ``steps=1e3`` reads) as ``1000``; any other value unchanged."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) <= MAX_INT else v


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    def check(v):
        ok = is_number(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v <= hi
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        return ok, "a finite number " + " and ".join(s for s in (lo_s, hi_s) if s)

    return check


def _choice(*options):
    def check(v):
        return v in options, "one of " + ", ".join(map(repr, options))

    return check


def _bool(v):
    return isinstance(v, bool), "true or false"


def _str(v):
    return isinstance(v, str) and v.strip() != "", "a non-empty string"


def _clip(v):
    pair = isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v) and v[0] < v[1]
    return v == "auto" or v is False or pair, (
        "auto (the data's range: [-1, 1] for images, none for 2-D points), false or [low, high] with low < high"
    )


#: the experiment trackers ``logger`` chooses from (each is also the name of its package and of its extra)
LOGGERS = ("tensorboard", "wandb")


def _loggers(v):
    names = LOGGERS
    ok = v == "none" or v in names or (isinstance(v, list) and len(v) > 0 and all(x in names for x in v))
    return ok, "none, tensorboard, wandb, or a list of them such as [tensorboard, wandb]"


def _optional(check):
    def opt(v):
        if v is None:
            return True, ""
        ok, allowed = check(v)
        return ok, f"null or {allowed}"

    return opt


# The checks of every fixed key. Named sections are checked by their builders (see training.components.build_components).
SCHEMA: dict[str, Any] = {
    "seed": _int(0, 2**63 - 1),
    "steps": _int(1, 10**9),
    "batch_size": _int(1, 2**20),
    "accumulate": _int(1, 2**20),
    "lr": _float(0, 10, lo_open=True),
    "prediction": _choice("eps", "v", "x0"),
    "optim": {
        "weight_decay": _float(0, 10),
        "beta1": _float(0, 1),
        "beta2": _float(0, 1),
        "eps": _float(0, 1, lo_open=True),
        "grad_clip": _float(0),
        "warmup_steps": _int(0, 10**9),
        "schedule": _choice("constant", "cosine"),
    },
    "ema": {"decay": _float(0, 1), "warmup": _float(1, 1e9)},
    "cond": {"enabled": _bool, "drop_prob": _float(0, 1)},
    "eval": {
        "samples": _int(1, 10**6),
        "method": _choice("auto", "ddpm", "ddim", "heun", "flow-euler", "flow-heun"),
        "steps": _int(1, 10**5),
        "eta": _float(0, 1),
        "seed": _int(0, 2**63 - 1),
        "batch_size": _int(1, 2**20),
        "seeding": _choice("per-chunk", "stream"),
        "clip": _clip,
        "guidance": _float(0, 100),
        "val_buckets": _int(1, 1000),
        "val_per_bucket": _int(0, 10**5),
    },
    "metrics": {"enabled": _bool, "n_real": _optional(_int(2, 10**9)), "inception_weights": _optional(_str)},
    "eval_every": _int(0, 10**9),
    "checkpoint_every": _int(0, 10**9),
    "keep_checkpoints": _int(1, 10**6),
    "log_every": _int(1, 10**9),
    "device": _str,
    "precision": _choice("auto", "fp32", "bf16"),
    "cudnn_benchmark": _bool,
    "on_nonfinite": _choice("error", "skip"),
    "logger": _loggers,
    "tensorboard": _bool,
    "progress": _bool,
}
SECTION_KEYS = set(SCHEMA) | set(NAMED_SECTIONS) | {"momentum"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as people write learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse one override value the way YAML would (numbers, booleans, lists, null); a bare word stays a string."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _yaml_problem(e: Exception) -> str:
    """What is wrong in a YAML text and where: "mapping values are not allowed here (line 2, column 5)"."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or first_line(e)
    if mark is None:
        return first_line(e)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from a file, with one-sentence errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.load(p.read_text(), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys, not {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    files = resources.files("diffusion_curriculum") / "presets"
    return sorted(f.name[:-5] for f in files.iterdir() if f.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The first sentence of a shipped preset's opening comment ("" if it has none): what ``presets`` shows."""
    f = resources.files("diffusion_curriculum") / "presets" / f"{name}.yaml"
    lines = []
    for line in f.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(x for x in lines if x)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]


def load_preset(name: str) -> dict:
    """A shipped preset by name (``digits``, ``toy2d``, ...)."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"preset {name!r} is not known{suggest(name, names)}; allowed: {', '.join(names)}")
    f = resources.files("diffusion_curriculum") / "presets" / f"{name}.yaml"
    data = yaml.load(f.read_text(), Loader=_Loader) or {}
    return data


def _normalise(cfg: dict) -> dict:
    for k in NAMED_SECTIONS:
        if isinstance(cfg.get(k), str):
            cfg[k] = {"name": cfg[k]}
    return cfg


def merge(base: dict, update: dict) -> dict:
    """Deep-merge ``update`` into a copy of ``base``. A named section whose ``name`` changes is replaced, not
    merged, so parameters of the old strategy do not leak into the new one."""
    out = copy.deepcopy(base)
    update = _normalise(copy.deepcopy(update))
    for k, v in update.items():
        if (
            k in NAMED_SECTIONS
            and isinstance(v, dict)
            and isinstance(out.get(k), dict)
            and "name" in v
            and v["name"] != out[k].get("name")
        ):
            out[k] = v
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _switches_section(item: str) -> bool:
    """Whether an override chooses a named section's strategy (``sampler.name=ddc``, or ``sampler=ddc``)."""
    key = item.split("=", 1)[0].strip()
    section, _, leaf = key.partition(".")
    return section in NAMED_SECTIONS and leaf in ("", "name")


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings with dotted keys (``sampler.patience=100``) to a copy of ``cfg``. The
    overrides that choose a section's strategy (``sampler.name=ddc``) go first, in their order, so a parameter
    given on the same command line is never dropped by the switch, whichever comes first."""
    out = copy.deepcopy(cfg)
    overrides = sorted(
        overrides, key=lambda item: not _switches_section(item)
    )  # stable: order kept within each
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. steps=500)")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"override {item!r} has an empty key")
        value = parse_value(text)
        if parts[0] not in SECTION_KEYS:
            raise ConfigError(f"unknown key {parts[0]!r}{suggest(parts[0], SECTION_KEYS)}")
        if len(parts) == 1:
            out = merge(out, {key: value})
            continue
        node = out
        for p in parts[:-1]:
            if isinstance(node.get(p), str) and p in NAMED_SECTIONS:
                node[p] = {"name": node[p]}
            if not isinstance(node.get(p), dict):
                if p in node:
                    raise ConfigError(f"cannot set {key!r}: {p!r} is a value, not a section")
                node[p] = {}
            node = node[p]
        leaf = parts[-1]
        if len(parts) == 2 and parts[0] in NAMED_SECTIONS and leaf == "name" and node.get("name") != value:
            node.clear()  # switching strategy: the old one's parameters do not apply
        node[leaf] = value
    return out


def _check_section(prefix: str, values: Any, schema: dict) -> None:
    """Check ``values`` against ``schema`` (the top level: only the keys the schema has); an integral float
    for an integer key is replaced by the integer, in place."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {values!r}")
    for k, v in list(values.items()):
        key = f"{prefix}.{k}" if prefix else str(k)
        if not prefix and k not in schema:  # a named section or momentum: checked elsewhere
            continue
        if k not in schema:
            allowed = list(schema)
            raise ConfigError(
                f"unknown key {key!r}{suggest(k, allowed)}; allowed: {', '.join(map(str, allowed))}"
            )
        check = schema[k]
        if isinstance(check, dict):
            _check_section(key, v, check)
            continue
        if getattr(check, "integer", False):
            values[k] = v = _as_int(v)
        ok, allowed = check(v)
        if not ok:
            raise ConfigError(invalid(key, v, allowed))


def validate(cfg: dict) -> dict:
    """Check every fixed key's type and range and the shape of the named sections; return ``cfg``."""
    if not isinstance(cfg, dict):
        raise ConfigError("the configuration must be a mapping of keys")
    for k in cfg:
        if k not in SECTION_KEYS:
            raise ConfigError(
                f"unknown key {k!r}{suggest(k, SECTION_KEYS)}; allowed: {', '.join(sorted(SECTION_KEYS))}"
            )
    _check_section("", cfg, SCHEMA)
    for k in NAMED_SECTIONS:
        sec = cfg.get(k)
        if not isinstance(sec, dict):
            raise ConfigError(f"{k} must be a mapping with a 'name' (or a bare name), got {sec!r}")
        name = sec.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{k}.name must be a non-empty string, got {name!r}")
        for p in sec:
            if not isinstance(p, str):
                raise ConfigError(f"{k} has a non-string key {p!r}")
    mom = cfg.get("momentum")
    if not isinstance(mom, dict) or not isinstance(mom.get("enabled", False), bool):
        raise ConfigError(f"momentum must be a mapping with enabled: true/false, got {mom!r}")
    return cfg


def resolve(
    preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] = ()
) -> dict:
    """Defaults ← preset or config file ← overrides, validated. ``preset`` and ``config_file`` exclude each other;
    with neither, the ``digits`` preset (the embedded default) is used."""
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    if config_file:
        base = load_yaml(config_file)
    else:
        base = load_preset(preset or "digits")
    cfg = merge(DEFAULTS, base)
    cfg = apply_overrides(cfg, list(overrides))
    return validate(cfg)


def dump(cfg: dict) -> str:
    """The YAML text of a resolved configuration (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def same_setting(given: Any, saved: Any) -> bool:
    """Whether a section of the configuration given on resuming (``given``) asks for what a run was trained with
    (``saved``, from its ``config.yaml``). A given ``"auto"`` matches whatever the run saved there: it asks the
    library to choose, and the run keeps the choice it started with (a run begun when a default was a concrete
    value, such as ``model.attention_resolutions: [4]`` before it became ``auto``, resumes with its preset)."""
    if given == "auto" or given == saved:
        return True
    if isinstance(given, dict) and isinstance(saved, dict):
        return all(same_setting(given.get(k), saved.get(k)) for k in set(given) | set(saved))
    return False
