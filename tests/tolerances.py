"""Numerical tolerances per precision, in one place (rtol, atol)."""

TOLERANCES = {
    "FP32": (1e-4, 1e-5),
    "FP16": (2e-2, 2e-2),
    "INT8": (1e-1, 1e-1),
}

# Whole networks accumulate more rounding than one op.
MODEL_TOLERANCES = {
    "FP32": (1e-3, 1e-4),
    "FP16": (2e-2, 2e-2),
}
