"""Writes the small NumPy files read by tests/npy_numpy.rs.

Needs: numpy (any 1.x or 2.x). Run from anywhere:
    python tests/data/npy/make.py
The values are fixed formulas repeated in tests/npy_numpy.rs; change both
together.
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name):
    return os.path.join(HERE, name)


# One 2x3 array per dtype mlc supports, with edge values.
ARRAYS = {
    "f4": np.array([[0.0, -1.5, np.inf], [-np.inf, np.nan, 3.25e-8]], dtype="<f4"),
    "f8": np.array([[0.0, -1.5, np.inf], [-np.inf, np.nan, 1e300]], dtype="<f8"),
    "f2": np.array([[0.0, -1.5, np.inf], [-np.inf, np.nan, 65504.0]], dtype="<f2"),
    "i1": np.array([[-128, -1, 0], [1, 2, 127]], dtype="|i1"),
    "i2": np.array([[-32768, -1, 0], [1, 2, 32767]], dtype="<i2"),
    "i4": np.array([[-(2**31), -1, 0], [1, 2, 2**31 - 1]], dtype="<i4"),
    "i8": np.array([[-(2**63), -1, 0], [1, 2, 2**63 - 1]], dtype="<i8"),
    "u1": np.array([[0, 1, 2], [3, 128, 255]], dtype="|u1"),
    "u2": np.array([[0, 1, 2], [3, 32768, 65535]], dtype="<u2"),
    "u4": np.array([[0, 1, 2], [3, 2**31, 2**32 - 1]], dtype="<u4"),
    "u8": np.array([[0, 1, 2], [3, 2**63, 2**64 - 1]], dtype="<u8"),
    "b1": np.array([[True, False, True], [False, False, True]], dtype="|b1"),
}

for code, a in ARRAYS.items():
    np.save(out(f"{code}.npy"), a)

# 0-d, empty, Fortran order, big-endian, format versions 2.0 and 3.0.
np.save(out("scalar_f8.npy"), np.array(2.5, dtype="<f8"))
np.save(out("empty_i4.npy"), np.zeros((0, 3), dtype="<i4"))
np.save(out("fortran_i4.npy"), np.asfortranarray(np.arange(24, dtype="<i4").reshape(2, 3, 4)))
np.save(out("big_i4.npy"), np.arange(6, dtype=">i4").reshape(2, 3))
np.save(out("big_f8.npy"), np.array([1.5, -2.0, 1e-300], dtype=">f8"))
for version in [(2, 0), (3, 0)]:
    with open(out(f"v{version[0]}_f4.npy"), "wb") as f:
        np.lib.format.write_array(f, np.arange(6, dtype="<f4").reshape(3, 2), version=version)

# Archives: stored and deflated, several arrays in a fixed order.
members = {
    "weight": np.arange(12, dtype="<f4").reshape(3, 4),
    "bias": np.array([1, -2, 3], dtype="<i8"),
    "flag": np.array(True),
}
np.savez(out("savez.npz"), **members)
np.savez_compressed(out("savez_compressed.npz"), **members)
