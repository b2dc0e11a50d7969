//! NumPy `.npy` / `.npz` reading and writing.
