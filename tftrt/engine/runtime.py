"""Runtime: :class:`Engine` (immutable, shareable) and :class:`ExecutionContext` (per arena).

An engine holds the optimized network, the uploaded weights, the chosen tactics and the memory
plan. A context runs it: layer by layer through the runners the backend prepared (prepared
once per engine and shared), or through the backend's own context when it provides one
(``Backend.create_context``: arena, streams, CUDA graphs). :meth:`Engine.execute` keeps one
context per slot of its arena pool (memory.ArenaPool) and leases a slot per call: calls that
never overlap reuse one context (its captured CUDA graphs), whichever thread makes them.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tftrt.engine.memory import ArenaPool, ArenaSlot, MemoryPlan
from tftrt.engine.network import Network


class Engine:
    """A network built for one set of input shapes, one precision and one device."""

    def __init__(self, network: Network, backend, precision: str, memory: MemoryPlan,
                 config: Optional[dict] = None, weights: Optional[Dict[str, Any]] = None,
                 device: Optional[str] = None):
        self.network = network
        self.backend_impl = backend
        self._precision = precision
        self.memory = memory
        self.config = dict(config or {})
        self.device = device or backend.device_name()
        self.weights = weights if weights is not None else \
            {k: backend.upload(v) for k, v in network.weights.items()}
        self.build_info: Dict[str, Any] = {}
        self._runners: Optional[List] = None
        self._lock = threading.Lock()
        # Arenas this engine runs in (a profile's engines share one pool: share_arenas) and
        # one execution context per slot of it.
        self.arena_pool = ArenaPool()
        self._contexts: Dict[ArenaSlot, "ExecutionContext"] = {}
        last: Dict[str, int] = {}
        for k, layer in enumerate(network.layers):
            for i in layer.inputs:
                last[i] = k
        keep = set(network.outputs) | set(network.weights)
        self._free_after: List[List[str]] = [[] for _ in network.layers]
        for name, k in last.items():
            if name and name not in keep:
                self._free_after[k].append(name)

    # --- description ---------------------------------------------------------------------
    @property
    def input_names(self) -> List[str]:
        return list(self.network.inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self.network.outputs)

    @property
    def input_shapes(self) -> List[Tuple[int, ...]]:
        return [self.network.tensors[n].shape for n in self.network.inputs]

    @property
    def output_shapes(self) -> List[Optional[Tuple[int, ...]]]:
        return [self.network.tensors[n].shape for n in self.network.outputs]

    @property
    def input_dtypes(self) -> List[np.dtype]:
        return [np.dtype(self.network.tensors[n].dtype) for n in self.network.inputs]

    @property
    def output_dtypes(self) -> List[np.dtype]:
        return [np.dtype(self.network.tensors[n].dtype) for n in self.network.outputs]

    @property
    def device_memory_bytes(self) -> int:
        """Activation arena + tactic scratch + outputs of one run (weights not included)."""
        return self.memory.total_bytes

    @property
    def weight_bytes(self) -> int:
        return int(sum(w.nbytes for w in self.network.weights.values()))

    @property
    def num_layers(self) -> int:
        return len(self.network.layers)

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def backend(self) -> str:
        """Backend name ("numpy", "cupy"); ``backend_impl`` is the backend object."""
        return self.backend_impl.name

    def layers_summary(self) -> List[Tuple[str, str, str, str]]:
        """(name, kind, epilogue e.g. "bias+relu", tactic) per layer."""
        return [(l.name, l.kind, l.epilogue_summary(), l.tactic or "default")
                for l in self.network.layers]

    def __repr__(self) -> str:
        return (f"<Engine {self.network.name}: {self.num_layers} layers, {self.precision}, "
                f"{self.backend} on {self.device}>")

    # --- running -------------------------------------------------------------------------
    def runners(self) -> List:
        with self._lock:
            if self._runners is None:
                self._runners = [self.backend_impl.prepare_layer(self.network, l, self.weights)
                                 for l in self.network.layers]
                persist = getattr(self.backend_impl, "persist_compiled", None)
                if callable(persist):  # optional backend hook: what preparing compiled, to disk
                    persist()
            return self._runners

    def create_execution_context(self, slot: Optional[ArenaSlot] = None) -> "ExecutionContext":
        """A context that runs in ``slot`` of :attr:`arena_pool` (its caller holds the slot
        whenever the context runs), or in an arena of its own."""
        return ExecutionContext(self, slot)

    def share_arenas(self, pool: ArenaPool) -> None:
        """Runs this engine in ``pool``'s arenas from now on (the engines of one optimization
        profile share them); contexts made in the old pool are dropped."""
        with self._lock:
            self.arena_pool = pool
            self._contexts = {}

    def execute(self, inputs: Union[Sequence[Any], Dict[str, Any]]) -> List[Any]:
        """Runs the engine (thread-safe: concurrent calls run in different arena slots)."""
        pool = self.arena_pool
        slot = pool.acquire()
        try:
            ctx = self._contexts.get(slot)
            if ctx is None or ctx.outgrown(slot):
                ctx = self._contexts[slot] = self.create_execution_context(slot)
            return ctx.execute(inputs)
        finally:
            pool.release(slot)

    def serialize(self) -> bytes:
        """The engine as a plan (see plan.py)."""
        from tftrt.engine.plan import serialize_engine
        return serialize_engine(self)


class ExecutionContext:
    """Runs an engine; holds per-run state (profiling). Used by one caller at a time.

    Set ``profile = True`` to record ``profile_result`` = [(layer name, seconds), ...] for
    the last run.
    """

    def __init__(self, engine: Engine, slot: Optional[ArenaSlot] = None):
        self.engine = engine
        self.profile = False
        self.profile_result: List[Tuple[str, float]] = []
        self._impl = engine.backend_impl.create_context(engine, slot)
        if self._impl is None:
            engine.runners()

    def outgrown(self, slot: ArenaSlot) -> bool:
        """Whether ``slot``'s arena was replaced by a larger one (an engine with a larger plan
        ran in it) since this context laid its tensors out in the old one: the context is
        then made again, so that the old arena is freed and the slot's engines share one."""
        arena = getattr(self._impl, "slot_buffer", None)
        return arena is not None and arena is not slot.buffer

    def _check_inputs(self, inputs) -> List[Any]:
        e = self.engine
        if isinstance(inputs, dict):
            missing = [n for n in e.input_names if n not in inputs]
            if missing:
                raise ValueError(f"inputs {missing} are missing; the engine takes "
                                 f"{e.input_names}")
            inputs = [inputs[n] for n in e.input_names]
        if len(inputs) != len(e.input_names):
            raise ValueError(f"the engine takes {len(e.input_names)} inputs {e.input_names}, "
                             f"got {len(inputs)}")
        out = []
        for name, x, shape, dt in zip(e.input_names, inputs, e.input_shapes, e.input_dtypes):
            if not hasattr(x, "shape"):
                x = np.asarray(x)
            if tuple(x.shape) != tuple(shape):
                raise ValueError(f"input {name} has shape {tuple(x.shape)} but the engine was "
                                 f"built for {tuple(shape)}; build an engine for this shape")
            x = e.backend_impl.asarray(x)
            if x.dtype != dt:
                x = x.astype(dt)
            out.append(x)
        return out

    def execute(self, inputs: Union[Sequence[Any], Dict[str, Any]]) -> List[Any]:
        """Runs the engine on ``inputs`` (list in ``input_names`` order, or a dict).

        Returns:
          One backend array per output, in ``output_names`` order.
        """
        xs = self._check_inputs(inputs)
        if self._impl is not None:
            return self._impl.execute(xs)
        return self._execute_impl(xs)

    def _execute_impl(self, xs: List[Any]) -> List[Any]:
        e = self.engine
        net = e.network
        env: Dict[str, Any] = dict(e.weights)
        env.update(zip(net.inputs, xs))
        prof: List[Tuple[str, float]] = []
        backend = e.backend_impl
        for k, (layer, run) in enumerate(zip(net.layers, e.runners())):
            ins = [env[i] if i else None for i in layer.inputs]
            if self.profile:
                backend.synchronize()
                t0 = time.perf_counter()
            try:
                outs = run(ins)
            except Exception as err:
                raise RuntimeError(f"layer {layer.name} ({layer.kind}) failed: "
                                   f"{type(err).__name__}: {err}") from err
            if self.profile:
                backend.synchronize()
                prof.append((layer.name, time.perf_counter() - t0))
            for o, v in zip(layer.outputs, outs):
                env[o] = v
            for name in e._free_after[k]:
                env.pop(name, None)
        if self.profile:
            self.profile_result = prof
        result = []
        external = {id(v) for v in xs} | {id(v) for v in e.weights.values()}
        for o in net.outputs:
            v = env[o]
            if isinstance(v, np.ndarray) and (v.base is not None or id(v) in external or
                                              not v.flags.c_contiguous):
                v = np.array(v, copy=True)  # never hand out inputs, weights or views of them
            result.append(v)
        return result
