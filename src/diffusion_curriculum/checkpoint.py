"""Atomic, pickle-free checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``step_00001000/`` holding ``tensors.safetensors`` and ``state.json``. It is
written under a temporary name in the same folder, flushed to disk, then renamed — a rename is atomic, so a
crash leaves either the complete checkpoint or none, never a partial one under the final name. ``state.json``
records the SHA-256 of the tensor file, so a file damaged later is detected and skipped in favour of the
previous checkpoint. Nothing here unpickles.

Nested Python state (optimizer ``state_dict``, sampler state, RNG states) is stored by :func:`flatten`:
tensors go to the safetensors file under a path key, the rest to JSON with a small codec that keeps int dict
keys and tuples (so ``optimizer.load_state_dict`` gets back exactly what it gave).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checks import first_line, honour_umask

TENSORS = "tensors.safetensors"
STATE = "state.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
#: the parts of a trainer's state that :func:`load` reads straight onto a device when it is given one (the
#: weights and the optimizer's moments: the bulk of a checkpoint); everything else (random-stream states,
#: sampler state, counters) is read onto the CPU, where its owners keep it
ON_DEVICE = ("model", "ema", "optimizer")


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, truncated, corrupt, or from another configuration)."""


# -- flatten / unflatten -------------------------------------------------------------------------------
def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Return a JSON-able copy of ``obj`` with tensors moved into ``tensors`` (keys under ``prefix``)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        # a private contiguous CPU copy: safetensors refuses tensors that share memory, and the caller's
        # tensors keep changing after save() returns
        tensors[prefix] = t.contiguous().cpu() if t.device.type != "cpu" else t.contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {
            "__items__": [
                [flatten(k, tensors, f"{prefix}.k{i}"), flatten(v, tensors, f"{prefix}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy array or scalar
        return flatten(torch.as_tensor(obj), tensors, prefix)
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint lacks tensor {key!r}")
            return tensors[key]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__items__"]}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


# -- files ---------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def step_dir(ckpt_root: Path, step: int) -> Path:
    """The directory of checkpoint ``step`` under ``ckpt_root``: ``step_00001234``."""
    return Path(ckpt_root) / f"step_{step:08d}"


def save(ckpt_root: str | Path, step: int, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``state`` (any nesting of tensors, numbers, strings, lists, dicts, tuples) as checkpoint ``step``.

    Atomic: written to a temporary directory, fsynced, renamed. Keeps the newest ``keep`` checkpoints.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors: dict[str, torch.Tensor] = {}
        meta = flatten(state, tensors, "s")
        save_file(tensors, str(tmp / TENSORS))
        honour_umask(tmp / TENSORS)  # safetensors writes its file private (0600)
        _fsync_file(tmp / TENSORS)
        slow = float(os.environ.get("DIFFUSION_CURRICULUM_TEST_SLOW_CHECKPOINT", "0") or 0)
        if slow > 0:  # test hook: widen the window in which a kill lands inside the write
            time.sleep(slow)
        doc = {
            "format": FORMAT,
            "step": step,
            "sha256": _sha256(tmp / TENSORS),
            "state": meta,
        }
        doc["state_sha256"] = _json_digest(doc)
        with open(tmp / STATE, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            # never delete the old copy before the new one is in place: move it aside, rename, then remove it
            # (a crash in between leaves the previous step's checkpoint as the newest, never a half-deleted one)
            aside = root / f".old-{final.name}-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(final, aside)
            os.rename(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(root)[keep:]:
            # renamed first, so a crash mid-delete never leaves a half-deleted step_* directory behind
            doomed = root / f".del-{old.name}-{os.getpid()}"
            try:
                os.rename(old, doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def _json_digest(doc: dict) -> str:
    """SHA-256 of a state.json document's content (every field but the digest itself)."""
    rest = {k: v for k, v in doc.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


_LEFTOVER = re.compile(r"^\.(tmp|old|del)-(step_\d{8,})-(\d+)$")


def remove_leftovers(ckpt_root: str | Path) -> list[Path]:
    """Tidy what a killed writer left behind, once the process that wrote it is gone: ``.tmp-*`` (half written)
    and ``.del-*`` (half deleted) are removed; an ``.old-*`` (a complete checkpoint moved aside while being
    replaced) is put back if its replacement never arrived, else removed. Returns the paths handled."""
    root = Path(ckpt_root)
    handled = []
    if not root.is_dir():
        return handled
    for p in sorted(root.iterdir()):
        m = _LEFTOVER.match(p.name)
        if not m:
            continue
        kind, name, pid = m.group(1), m.group(2), int(m.group(3))
        if pid != os.getpid() and _alive(pid):
            continue  # another live process may be writing it
        if kind == "old" and not (root / name).exists():
            os.rename(p, root / name)
        else:
            shutil.rmtree(p, ignore_errors=True)
        handled.append(p)
    return handled


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Checkpoint directories under ``ckpt_root``, newest step first (temporary ones are never listed)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _read_tensors(path: Path, device: str | torch.device | None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's file: those under an :data:`ON_DEVICE` part onto ``device``, the others
    onto the CPU."""
    target = "cpu" if device is None else str(torch.device(device))
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = list(f.keys())
        # a key is "s.<part>.<...>" (flatten's prefix "s"): its part decides where the tensor goes
        on_device = [k for k in keys if target != "cpu" and k.split(".", 2)[1:2] in ([p] for p in ON_DEVICE)]
        for k in keys:
            if k not in on_device:
                out[k] = f.get_tensor(k)
    if on_device:
        with safe_open(str(path), framework="pt", device=target) as f:
            for k in on_device:
                out[k] = f.get_tensor(k)
    return out


def load(path: str | Path, device: str | torch.device | None = None) -> tuple[int, dict[str, Any]]:
    """Read and verify one checkpoint directory; return ``(step, state)``. Raises :class:`CheckpointError`.
    ``device`` (e.g. a rank's GPU): the tensors of the :data:`ON_DEVICE` parts are read from the file straight
    onto it, so a resume holds neither the weights nor the optimizer state in host memory; the rest, and every
    tensor when ``device`` is None or the CPU, are read onto the CPU."""
    p = Path(path)
    sf, js = p / STATE, p / TENSORS
    if not sf.is_file() or not js.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is incomplete (needs {STATE} and {TENSORS})")
    try:
        doc = json.loads(sf.read_text())
        step, digest, meta = int(doc["step"]), doc["sha256"], doc["state"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {str(p)!r} has an unreadable {STATE}") from None
    if doc.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(p)!r} has format {doc.get('format')!r}; this version reads {FORMAT}"
        )
    if _sha256(js) != digest:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt: {TENSORS} does not match its recorded checksum"
        )
    if "state_sha256" in doc and _json_digest(doc) != doc["state_sha256"]:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt: {STATE} does not match its recorded checksum"
        )
    try:
        tensors = _read_tensors(js, device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read: {first_line(e, 200)}") from None
    try:
        return step, unflatten(meta, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is unusable: {e}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} has a malformed {STATE} ({type(e).__name__})") from None
