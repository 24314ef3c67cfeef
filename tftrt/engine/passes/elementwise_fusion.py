"""Elementwise chain fusion: consecutive pointwise layers -> one pointwise layer.

A pointwise layer whose output feeds exactly one other pointwise layer (and is not a network
output) is merged into it: the programs are concatenated, the consumer's reference to the
intermediate becomes a reference to the producer's last step, and the inputs are merged
(deduplicated). Size-1 float/int constants become literals in the program, so the GPU backend
generates one kernel with scalars inlined. Example: ``sigmoid(x) -> mul(x, .)`` becomes the
program ``[sigmoid($0), mul($0, %0)]`` (swish) over the single input x.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from tftrt.engine.network import Layer, Network
from tftrt.engine.shapes import program_dtypes


def _ref(a, inputs_map, step_offset):
    if isinstance(a, str) and a.startswith("$"):
        return inputs_map[int(a[1:])]
    if isinstance(a, str) and a.startswith("%"):
        return f"%{int(a[1:]) + step_offset}"
    return a


def _merge(members: List[Layer]) -> Layer:
    """One pointwise layer running ``members`` (topological order; each but the last read
    only by later members) as one program: each member's steps appended once, a reference to
    an earlier member's output becoming a reference to that member's last step. Named, with
    the outputs, as the last member."""
    inputs: List[str] = []
    index: Dict[str, int] = {}
    last_step: Dict[str, str] = {}  # a member's output -> "%<its last step>"
    prog: List[dict] = []
    for layer in members:
        refs = []
        for i in layer.inputs:
            if i in last_step:
                refs.append(last_step[i])
            else:
                if i not in index:
                    index[i] = len(inputs)
                    inputs.append(i)
                refs.append(f"${index[i]}")
        off = len(prog)
        prog += [dict(st, args=[_ref(a, refs, off) for a in st["args"]])
                 for st in layer.attrs["program"]]
        last_step[layer.outputs[0]] = f"%{len(prog) - 1}"
    root = members[-1]
    return Layer(root.name, "pointwise", inputs, list(root.outputs), {"program": prog},
                 precision=root.precision)


def _inline_scalars(net: Network, layer: Layer) -> None:
    """Size-1 weights of ``layer`` become literals of its program, each where the program's
    dtypes stay what they were: a literal has none, and a step whose dtype came from scalar
    weights alone (a where between two float16 or int64 constants) became float32 (helper
    hunt, 2026-12-02). At least one tensor input stays, and a weight of more dimensions than
    every input that is not such a weight stays too: its ones are the output's leading
    dimensions (x [3] * c [1, 1, 1] is [1, 1, 3]), which the program's shape would lose
    (the output came out [3], and a reduction after it summed the wrong axis: helper
    hunt, s48)."""
    out = net.tensors[layer.outputs[0]].shape
    size1 = {k: net.weights[name] for k, name in enumerate(layer.inputs)
             if name in net.weights and net.weights[name].size == 1 and
             net.weights[name].dtype.kind in "fiu"}
    ranks = [len(net.tensors[name].shape) for k, name in enumerate(layer.inputs)
             if k not in size1 and net.tensors[name].shape is not None]
    if out is None or not ranks:
        return
    scalars = {k: w.reshape(()).item() for k, w in size1.items()  # the candidates
               if w.ndim <= min(len(out), max(ranks))}
    if not scalars:
        return
    dtypes = [str(net.tensors[n].dtype) for n in layer.inputs]
    program = layer.attrs["program"]

    def rewritten(literals: Dict[int, object]):
        """(program, kept inputs) with inputs ``literals`` (index -> value) inlined."""
        remap, keep = {}, []
        for k in range(len(layer.inputs)):
            if k in literals:
                remap[k] = literals[k]
            else:
                remap[k] = f"${len(keep)}"
                keep.append(k)
        return [dict(st, args=[remap[int(a[1:])] if isinstance(a, str) and a.startswith("$")
                               else a for a in st["args"]]) for st in program], keep

    def typed(prog, keep):
        return program_dtypes([dict(st) for st in prog], [dtypes[k] for k in keep])

    want = typed(program, list(range(len(layer.inputs))))
    literals: Dict[int, object] = {}
    # every scalar at once first, the common case: one rewrite and typing of the program
    # instead of one per scalar (an add_n of 1,000 branches has ~2,000 scalars and ~4,000
    # steps: quadratic, 56 s of a build; scaling hunt, 2026-12-04)
    if len(scalars) < len(layer.inputs) and typed(*rewritten(scalars)) == want:
        literals = dict(scalars)
    for k, value in ([] if literals else scalars.items()):
        if len(literals) + 1 == len(layer.inputs):
            break
        trial = {**literals, k: value}
        if typed(*rewritten(trial)) == want:
            literals = trial
    if literals:
        layer.attrs["program"], keep = rewritten(literals)
        layer.inputs = [layer.inputs[k] for k in keep]


def elementwise_fusion(net: Network) -> Network:
    """Merges chains of pointwise layers (see module doc). One pass in topological order
    merges each layer into its consumer, which takes its place in the order, so a chain
    collapses in one pass (linear in the layers; a 1,500-op chain took 11 s restarting the
    scan after every merge, helper hunt 2026-12-01); passes repeat while one merged
    something (a merge can leave a producer with one consumer)."""
    net = net.copy()
    if len({l.name for l in net.layers}) != len(net.layers):
        net.uniquify_layer_names()  # consumers are told apart by name below
    outputs = set(net.outputs)
    # a fake-quant op's output cast alone (to float16: mixed-precision QAT) stays a tensor of
    # its own: the op's range carries across such a cast to the INT8 layer reading it
    # (quantization._code_keeping_cast), and merged, the fake-quant output was gone and the
    # convs after it FP16 (bf16 hunt, 2026-12-07)
    from tftrt.engine.quantization import _code_keeping_cast
    table = getattr(net, "quantization", None) or {}
    fake_outs = {net.resolve(k) for k in (table.get("fake_quant") or {})}
    changed = True
    while changed:
        changed = False
        # tensor -> names of the layers reading it
        cons = {t: list(dict.fromkeys(l.name for l in ls))
                for t, ls in net.consumers().items()}
        layers: List[Optional[Layer]] = list(net.layers)
        pos = {l.name: k for k, l in enumerate(layers)}
        groups: Dict[str, List[Layer]] = {}  # a layer -> the layers merged into it so far
        for k, layer in enumerate(layers):
            if layer is None or layer.kind != "pointwise" or layer.outputs[0] in outputs:
                continue
            users = cons.get(layer.outputs[0], [])
            if len(users) != 1:
                continue
            j = pos[users[0]]
            user = layers[j]
            if user is None or user.kind != "pointwise" or j <= k or \
                    (layer.outputs[0] in fake_outs and _code_keeping_cast(user)):
                continue
            # the user (later in the order) takes the layer and what was merged into it
            groups[user.name] = groups.pop(layer.name, [layer]) + groups.get(user.name, [user])
            layers[k] = None
            net.tensors.pop(layer.outputs[0], None)
            for t in layer.inputs:  # its inputs are now read by the user
                if t:
                    renamed = [user.name if n == layer.name else n for n in cons.get(t, [])]
                    cons[t] = list(dict.fromkeys(renamed))
            changed = True
        for name, members in groups.items():
            k = pos[name]
            layers[k] = _merge(sorted(members, key=lambda l: pos[l.name]))
        net.layers = [l for l in layers if l is not None]
    for layer in net.layers:
        if layer.kind == "pointwise":
            _inline_scalars(net, layer)
    net.prune_tensors()
    return net
