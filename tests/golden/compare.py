"""One comparison for the parity tests: every entry of ``actual`` within ``rtol`` (relative) of the
golden ``expected``, with a message that names the worst entry and its relative difference."""
import numpy as np


def relative_differences(actual: dict, expected: dict) -> dict:
    """``|a - e| / |e|`` per key (``|a - e|`` where ``e`` is 0); ``actual`` values may be tensors."""
    out = {}
    for key, value in expected.items():
        a = np.asarray(actual[key].detach().cpu().double() if hasattr(actual[key], "detach") else actual[key],
                       dtype=np.float64)
        e = np.asarray(value, dtype=np.float64)
        diff = np.abs(a - e)
        out[key] = float(np.max(np.where(e != 0, diff / np.where(e != 0, np.abs(e), 1), diff), initial=0.0))
    return out


def assert_all_close(actual: dict, expected: dict, rtol: float) -> float:
    """Same keys, and every value within ``rtol`` of the golden one; returns the largest relative difference."""
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    diffs = relative_differences(actual, expected)
    worst = max(diffs, key=diffs.get)
    print(f"largest relative difference: {worst} {diffs[worst]:.3g}")  # shown by pytest -s, for measuring
    assert diffs[worst] <= rtol, f"{worst}: relative difference {diffs[worst]:.3g} > {rtol:g}"
    return diffs[worst]
