"""Memory planner: no two live tensors overlap; the workspace limit is enforced clearly."""

import pytest

from tests.engine.models import resnet50
from tests.engine.test_passes import _bound
from tftrt.engine import BuilderConfig, EngineBuildError, build_engine
from tftrt.engine.memory import ALIGNMENT, plan_memory, tensor_lifetimes
from tftrt.engine.passes import run_passes


def _check_no_overlap(plan):
    names = list(plan.offsets)
    root = lambda n: plan.aliases.get(n, n)  # noqa: E731 - a reshape view shares its bytes
    for i, a in enumerate(names):
        assert plan.offsets[a] % ALIGNMENT == 0
        for b in names[i + 1:]:
            if root(a) == root(b):
                continue
            (fa, la), (fb, lb) = plan.lifetimes[a], plan.lifetimes[b]
            if la < fb or lb < fa:
                continue  # never live together
            a0, a1 = plan.offsets[a], plan.offsets[a] + plan.sizes[a]
            b0, b1 = plan.offsets[b], plan.offsets[b] + plan.sizes[b]
            assert a1 <= b0 or b1 <= a0, f"{a} and {b} overlap while both live"


@pytest.mark.parametrize("optimize", [True, False])
def test_resnet_plan_has_no_overlaps_and_reuses_memory(optimize):
    model, feeds = resnet50(batch=1, size=32)
    net = _bound(model, feeds)
    if optimize:
        net = run_passes(net)
    plan = plan_memory(net)
    _check_no_overlap(plan)
    total = sum(plan.sizes.values())
    assert 0 < plan.arena_bytes < total / 4  # lifetimes let most tensors share bytes
    assert set(plan.offsets).isdisjoint(net.outputs)
    life = tensor_lifetimes(net)
    assert all(life[o][1] == len(net.layers) for o in net.outputs)


def test_workspace_limit_error_has_the_numbers():
    model, feeds = resnet50(batch=1, size=32)
    engine = build_engine(model, {k: v.shape for k, v in feeds.items()}, BuilderConfig())
    need = engine.device_memory_bytes
    mem = engine.memory
    assert need == mem.arena_bytes + mem.workspace_bytes + mem.output_bytes
    assert mem.output_bytes == 256  # the [1, 10] softmax output, aligned
    with pytest.raises(EngineBuildError, match=rf"needs {need} bytes.*is 1000;"):
        build_engine(model, {k: v.shape for k, v in feeds.items()},
                     BuilderConfig(max_device_memory_bytes=1000))
    # max_workspace_size_bytes bounds tactic scratch only, as TensorRT's workspace did:
    # exactly the scratch builds although the whole engine needs more.
    scratch = mem.workspace_bytes
    assert 0 < scratch < need
    build_engine(model, {k: v.shape for k, v in feeds.items()},
                 BuilderConfig(max_workspace_size_bytes=scratch))
    with pytest.raises(EngineBuildError, match=rf"need {scratch} bytes of scratch"):
        build_engine(model, {k: v.shape for k, v in feeds.items()},
                     BuilderConfig(max_workspace_size_bytes=scratch - 1))


def test_reshapes_between_arena_tensors_are_views():
    """An intermediate reshape takes its input's bytes (no copy at run time) and the input stays
    live as long as the view is read; a reshape of a network input or into a network output
    keeps its own bytes."""
    from onnx import helper
    from tests.engine.harness import check_model, make_model, rand
    N = helper.make_node
    nodes = [N("Relu", ["x"], ["a"]),
             N("Reshape", ["a", "s1"], ["b"]),        # arena -> arena: a view
             N("Reshape", ["b", "s2"], ["c"]),        # a view of a view
             N("Sigmoid", ["x"], ["d"]),               # allocated while the views live
             N("Add", ["c", "d"], ["e"]),
             N("Reshape", ["e", "s1"], ["y"])]        # into the network output: a copy
    import numpy as np
    feeds = {"x": rand(2, 3, 4)}
    model = make_model(nodes, feeds, {"s1": np.array([6, 4], np.int64),
                                      "s2": np.array([2, 3, 4], np.int64)})
    net = _bound(model, feeds)
    net = run_passes(net, [])
    plan = plan_memory(net)
    assert plan.aliases == {"b": "a", "c": "a"}
    assert plan.offsets["b"] == plan.offsets["c"] == plan.offsets["a"]
    assert plan.lifetimes["a"][1] >= plan.lifetimes["c"][1]
    assert "y" not in plan.aliases and "y" not in plan.offsets
    assert plan.offsets["d"] != plan.offsets["a"]
    _check_no_overlap(plan)
    from tftrt.engine.memory import MemoryPlan
    assert MemoryPlan.from_json(plan.to_json()).aliases == plan.aliases
    check_model(model, feeds)
