"""Activation memory: tensor lifetimes -> offsets in one arena (dynamic tensor memory).

Every static tensor produced by a layer, other than the network outputs (handed to the caller,
so allocated per execution), gets a byte range in one arena. Two tensors may share bytes only
when their lifetimes [producer, last consumer] do not overlap. Placement is greedy best-fit:
tensors in decreasing size, each into the smallest free gap among the tensors live at the same
time, else on top. Offsets are aligned to 256 bytes (cuDNN/cuBLASLt alignment).

Reshapes are views: the output of a ``reshape`` layer whose input and output both live in the
arena takes its input's bytes (``MemoryPlan.aliases``: output -> the tensor whose bytes it
shares), the input's lifetime is extended over the output's, and an execution context that
lays tensors out by this plan skips the layer (its output already holds the values).

Engines for several shapes of one optimization profile share arenas (:class:`ArenaPool`): a
call leases a slot (an arena and the stream that orders its users) for the time it runs, so
calls that never overlap (sequential calls, from any threads) all use one slot, and the pool
holds as many slots as calls ever ran at once, not one per thread that ever called. Each arena
is sized for the largest plan (the opt shape of a Range profile), each engine's plan lays its
tensors out from offset 0 of it.

Not per thread: an engine node inside a TF graph (an EagerPyFunc) runs on one of TF's
inter-op threads with a Python thread state made for that call and dropped after it, so
per-thread state (``threading.local``) lived for one call: every graph-function call built a
new execution context (arena, stream, buffers) and ran its layers eagerly, never replaying the
CUDA graph a context captures on its second run.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from tftrt.engine.errors import EngineBuildError
from tftrt.engine.network import Network

ALIGNMENT = 256


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclasses.dataclass
class MemoryPlan:
    """Arena layout: per-tensor offsets/sizes/lifetimes, arena and scratch bytes."""

    offsets: Dict[str, int]
    sizes: Dict[str, int]
    lifetimes: Dict[str, Tuple[int, int]]
    arena_bytes: int
    workspace_bytes: int = 0
    dynamic: List[str] = dataclasses.field(default_factory=list)
    output_bytes: int = 0
    aliases: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Arena + tactic scratch + the (static) network outputs of one execution."""
        return self.arena_bytes + self.workspace_bytes + self.output_bytes

    @property
    def context_bytes(self) -> int:
        """Bytes of an execution context's arena: activations, then (aligned) the scratch."""
        return _align(self.arena_bytes) + self.workspace_bytes

    def to_json(self) -> dict:
        return {"offsets": self.offsets, "sizes": self.sizes,
                "lifetimes": {k: list(v) for k, v in self.lifetimes.items()},
                "arena_bytes": self.arena_bytes, "workspace_bytes": self.workspace_bytes,
                "dynamic": self.dynamic, "output_bytes": self.output_bytes,
                "aliases": self.aliases}

    @staticmethod
    def from_json(d: dict) -> "MemoryPlan":
        return MemoryPlan(dict(d["offsets"]), dict(d["sizes"]),
                          {k: tuple(v) for k, v in d["lifetimes"].items()}, d["arena_bytes"],
                          d.get("workspace_bytes", 0), list(d.get("dynamic", [])),
                          d.get("output_bytes", 0), dict(d.get("aliases", {})))


def tensor_lifetimes(net: Network) -> Dict[str, Tuple[int, int]]:
    """[first, last] layer index for every tensor produced by a layer."""
    life: Dict[str, List[int]] = {}
    for k, layer in enumerate(net.layers):
        for o in layer.outputs:
            life[o] = [k, k]
        for i in layer.inputs:
            if i in life:
                life[i][1] = k
    end = len(net.layers)
    for o in net.outputs:
        if o in life:
            life[o][1] = end
    return {k: (v[0], v[1]) for k, v in life.items()}


def reshape_aliases(net: Network, sizes: Dict[str, int]) -> Dict[str, str]:
    """reshape output -> the arena tensor whose bytes it views (chains resolve to the first
    tensor). Only tensors that both have arena bytes (``sizes``) alias."""
    aliases: Dict[str, str] = {}
    for layer in net.layers:
        if layer.kind != "reshape" or len(layer.outputs) != 1 or not layer.inputs:
            continue
        x, y = layer.inputs[0], layer.outputs[0]
        if x in sizes and y in sizes and sizes[x] == sizes[y] and \
                net.tensors[x].dtype == net.tensors[y].dtype:
            aliases[y] = aliases.get(x, x)
    return aliases


def plan_memory(net: Network, workspace_bytes: int = 0,
                max_workspace_size_bytes: Optional[int] = None,
                max_device_memory_bytes: Optional[int] = None) -> MemoryPlan:
    """Places the network's intermediate tensors in one arena.

    Args:
      net: a network with inferred shapes (after passes and precision).
      workspace_bytes: scratch the chosen tactics need (the largest one; layers run in turn).
      max_workspace_size_bytes: limit on tactic scratch (TensorRT's meaning of the TF-TRT
        parameter: activations are not part of the workspace); None for no limit.
      max_device_memory_bytes: limit on arena + scratch + outputs; None for no limit.
    Raises:
      EngineBuildError: the plan needs more than a limit allows.
    """
    life = tensor_lifetimes(net)
    outputs = set(net.outputs)
    sizes, dynamic = {}, []
    for name in life:
        if name in outputs or not name:
            continue
        info = net.tensors[name]
        if not info.is_static or info.dtype is None:
            dynamic.append(name)
            continue
        sizes[name] = _align(max(info.nbytes(), 1))
    aliases = reshape_aliases(net, sizes)
    for out, root in aliases.items():  # the root's bytes stay live while any view is used
        first, last = life[root]
        life[root] = (first, max(last, life[out][1]))
        del sizes[out]
    order = sorted(sizes, key=lambda n: (-sizes[n], life[n][0], n))
    placed: List[Tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: Dict[str, int] = {}
    top = 0
    for name in order:
        size, (first, last) = sizes[name], life[name]
        busy = sorted((o, e) for o, e, f, l in placed if not (l < first or f > last))
        best, best_gap, cursor = None, None, 0
        for o, e in busy:
            gap = o - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, e)
        off = best if best is not None else cursor
        offsets[name] = off
        placed.append((off, off + size, first, last))
        top = max(top, off + size)
    out_bytes = sum(_align(net.tensors[o].nbytes()) for o in set(net.outputs)
                    if net.tensors[o].is_static and o not in net.inputs)
    for out, root in aliases.items():
        offsets[out], sizes[out] = offsets[root], sizes[root]
    plan = MemoryPlan(offsets, sizes, {k: life[k] for k in sizes}, top, int(workspace_bytes),
                      dynamic, out_bytes, aliases)
    if max_workspace_size_bytes is not None and plan.workspace_bytes > max_workspace_size_bytes:
        raise EngineBuildError(
            f"the chosen tactics need {plan.workspace_bytes} bytes of scratch but "
            f"max_workspace_size_bytes is {max_workspace_size_bytes}; raise "
            f"max_workspace_size_bytes")
    if max_device_memory_bytes is not None and plan.total_bytes > max_device_memory_bytes:
        raise EngineBuildError(
            f"the engine needs {plan.total_bytes} bytes of device memory ({plan.arena_bytes} for "
            f"activations + {plan.workspace_bytes} tactic scratch + {plan.output_bytes} for "
            f"outputs) but max_device_memory_bytes "
            f"is {max_device_memory_bytes}; raise max_device_memory_bytes or build for smaller "
            f"input shapes (batch size)")
    return plan


class ArenaSlot:
    """One arena of an :class:`ArenaPool`, held by one call at a time: ``buffer`` (``nbytes``
    long) and ``state``, where a backend keeps what must go with it (the CuPy backend: the
    stream that orders the engines using this buffer and the event its last caller's reads
    of the outputs recorded)."""

    def __init__(self):
        self.buffer: Any = None
        self.nbytes = 0
        self.state: Dict[str, Any] = {}


class ArenaPool:
    """Arenas shared by the engines of one optimization profile set (or of one engine): a
    caller takes a slot no other caller holds (:meth:`acquire`), runs, and gives it back
    (:meth:`release`).
    Each buffer is at least :attr:`planned_bytes` long (the largest plan noted).

    ``stats``: ``allocations`` (buffers allocated), ``bytes`` (their total size) and
    ``slots`` (slots made: the most calls that ever ran at once), so that tests see what a
    profile costs whatever the backend.
    """

    def __init__(self):
        self.planned_bytes = 0
        self._free: List[ArenaSlot] = []
        self._lock = threading.Lock()
        self.stats = {"allocations": 0, "bytes": 0, "slots": 0}

    def plan(self, nbytes: int) -> None:
        """Notes an engine's need (``MemoryPlan.context_bytes`` or more): buffers allocated
        from now on are at least this large."""
        with self._lock:
            self.planned_bytes = max(self.planned_bytes, int(nbytes))

    def acquire(self) -> ArenaSlot:
        """A slot for the caller alone until :meth:`release`: the one released last (so
        sequential callers share one), a new one when every slot is held."""
        with self._lock:
            if self._free:
                return self._free.pop()
            self.stats["slots"] += 1
        return ArenaSlot()

    def has_idle_slot(self) -> bool:
        """Whether :meth:`acquire` would now allocate no new slot's buffer (a slot is free,
        or none was made yet): work that may wait (a background warm-up) need not cost the
        memory of another arena."""
        with self._lock:
            return bool(self._free) or self.stats["slots"] == 0

    def release(self, slot: ArenaSlot) -> None:
        with self._lock:
            self._free.append(slot)

    def reserve(self, slot: ArenaSlot, nbytes: int, allocate: Callable[[int], Any]) -> Any:
        """``slot``'s buffer, at least ``nbytes`` long: allocated (``allocate(n)``, n = the
        larger of ``nbytes`` and the planned size) when it has none or a smaller one. A
        context laid out in the slot's old buffer is made again at its next call
        (runtime.ExecutionContext.outgrown), which frees the old buffer."""
        self.plan(nbytes)
        if slot.buffer is None or slot.nbytes < nbytes:
            n = max(int(nbytes), self.planned_bytes, 1)
            slot.buffer, slot.nbytes = allocate(n), n
            with self._lock:
                self.stats["allocations"] += 1
                self.stats["bytes"] += n
        return slot.buffer
