"""Numerical tolerances per precision, in one place (rtol, atol)."""

TOLERANCES = {
    "FP32": (1e-4, 1e-5),
    "FP16": (2e-2, 2e-2),
    "INT8": (1e-1, 1e-1),
}

# A GPU engine against the numpy engine at the same precision, FP32 built with TF32 off: the
# accumulation order differs (FMA), so atol is looser than TOLERANCES' FP32; TF32 rounds inputs.
GPU_VS_NUMPY = {
    "FP32": (1e-4, 1e-4),
    "TF32": (1e-2, 1e-2),
    "FP16": TOLERANCES["FP16"],
}

# Whole networks accumulate more rounding than one op.
MODEL_TOLERANCES = {
    "FP32": (1e-3, 1e-4),
    "FP16": (2e-2, 2e-2),
}
