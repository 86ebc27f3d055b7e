"""Find host reads of device data on a CPU: a ``TorchDispatchMode`` that follows *device data* through every op
and records each synchronising op applied to it, with the library's file:line.

On a CPU every tensor lives in host memory, so "is this a host read of device data?" cannot be told from the
device. The recorder therefore marks what would live on the training device — the model's parameters and
buffers, the dataset as the batcher holds it, everything the library moves with
:func:`diffusion_curriculum.device.to_device` — and every tensor computed from marked ones. A host copy made with
:class:`diffusion_curriculum.device.HostCopy` is unmarked: it is read steps later, never waiting for the step in
flight. Then any of these on a marked tensor is recorded:

* ops whose result size or value the host must wait for: ``_local_scalar_dense`` (``.item()``, ``float(t)``,
  ``bool(t)``), ``nonzero``, ``bincount``, ``masked_select``, ``unique``, ``repeat_interleave`` with tensor
  repeats, indexing with a boolean mask, ``equal``, ``is_nonzero``;
* ``.cpu()``, ``.tolist()``, ``.numpy()`` (which read host memory without dispatching on a CPU).
"""

from __future__ import annotations

import traceback
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import diffusion_curriculum

try:
    from diffusion_curriculum import device as device_mod
except ImportError:  # the library before it had its crossing points: nothing to exempt
    device_mod = None

LIBRARY = str(Path(diffusion_curriculum.__file__).parent)
aten = torch.ops.aten

ALWAYS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.bincount.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.repeat_interleave.Tensor,
    aten.repeat_interleave.self_Tensor,
}
BOOL_INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


def _where() -> str:
    """The innermost library frame of the current stack, as ``file:line``."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(LIBRARY) and not frame.filename.endswith("device.py"):
            return f"{Path(frame.filename).relative_to(LIBRARY)}:{frame.lineno}"
    return "outside the library"


class SyncRecorder(TorchDispatchMode):
    """Records ``(op, file:line)`` for every synchronising op on device data (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self._marked: set[int] = set()

    def mark(self, *tensors) -> None:
        """Treat these tensors (and, through the ops, all computed from them) as device data."""
        for t in tree_flatten(list(tensors))[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self._marked:
                self._marked.add(id(t))
                weakref.finalize(t, self._marked.discard, id(t))

    def unmark(self, t: torch.Tensor) -> None:
        self._marked.discard(id(t))

    def is_marked(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self._marked

    def record(self, what: str) -> None:
        self.found.append((what, _where()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = tree_flatten((args, kwargs))[0]
        marked = any(self.is_marked(x) for x in inputs)
        if marked and self._synchronises(func, args):
            self.record(str(func))
        out = func(*args, **kwargs)
        if marked:
            self.mark(out)
            if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
                self.mark(args[0])  # an in-place op with device data in it: the target is device data now
        return out

    @staticmethod
    def _synchronises(func, args) -> bool:
        if func in ALWAYS:
            return True
        if func in BOOL_INDEX and len(args) > 1:
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        return False


@contextmanager
def recording(*device_data):
    """``with recording(model, batcher.data) as rec: ...`` — ``rec.found`` lists the syncs inside."""
    rec = SyncRecorder()
    for x in device_data:
        rec.mark(*(list(x.parameters()) + list(x.buffers())) if isinstance(x, torch.nn.Module) else [x])
    reads = {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist", "numpy")}
    if device_mod is None:
        yield from _recording_plain(rec, reads)
        return
    real_to_device, real_host_copy_init = device_mod.to_device, device_mod.HostCopy.__init__

    def to_device(x, device):
        out = real_to_device(x, device)
        rec.mark(out)
        return out

    def host_copy_init(self, x):
        real_host_copy_init(self, x)
        rec.unmark(self._host)

    device_mod.to_device = to_device
    device_mod.HostCopy.__init__ = host_copy_init
    for name in reads:
        setattr(torch.Tensor, name, _reader(rec, reads[name], name))
    patched = _patch_importers(to_device)
    try:
        with rec:
            yield rec
    finally:
        device_mod.to_device = real_to_device
        device_mod.HostCopy.__init__ = real_host_copy_init
        for name, real in reads.items():
            setattr(torch.Tensor, name, real)
        for module, name, real in patched:
            setattr(module, name, real)


def _reader(rec: SyncRecorder, real, name: str):
    """``Tensor.<name>`` that records a read of device data."""

    def read(self, *a, **k):
        if rec.is_marked(self):
            rec.record(f"Tensor.{name}")
        return real(self, *a, **k)

    return read


def _recording_plain(rec: SyncRecorder, reads: dict):
    """:func:`recording` without the library's crossing points to patch."""
    for name in reads:
        setattr(torch.Tensor, name, _reader(rec, reads[name], name))
    try:
        with rec:
            yield rec
    finally:
        for name, real in reads.items():
            setattr(torch.Tensor, name, real)


def _patch_importers(replacement):
    """Modules that imported ``to_device`` by name get the recording one too; returns what to put back."""
    import sys

    patched = []
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("diffusion_curriculum") and getattr(module, "to_device", None) is not None:
            if module is not device_mod:
                patched.append((module, "to_device", module.to_device))
                module.to_device = replacement
    return patched
