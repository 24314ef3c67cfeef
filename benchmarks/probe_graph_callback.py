"""Where the graph form's engine callback spends its time (run h2): cProfile around each
EngineCallback call (on TF's EagerPyFunc thread), 300 graph calls of bench_boundary.py's
three-engine model; prints the top functions by own and by cumulative time.

    PYTHONPATH=$PWD python benchmarks/probe_graph_callback.py
"""
import cProfile, io, os, pstats, sys
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
from bench_boundary import three_engines, median_ms
from tftrt import conversion
prof = cProfile.Profile()
orig = conversion.EngineCallback.__call__
on = [False]
def profiled(self, *inputs):
    if not on[0]:
        return orig(self, *inputs)
    prof.enable()
    try:
        return orig(self, *inputs)
    finally:
        prof.disable()
conversion.EngineCallback.__call__ = profiled
conv, fn, x, d = three_engines(1)
graph_fn = getattr(fn, "native", fn)
print(f"graph call {median_ms(lambda: graph_fn(x=x), 300):.3f} ms (unprofiled)")
on[0] = True
median_ms(lambda: graph_fn(x=x), 300)
s = io.StringIO()
pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
print(s.getvalue()[:9000])
s = io.StringIO()
pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
print(s.getvalue()[:9000])
