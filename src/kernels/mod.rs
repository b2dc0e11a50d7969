//! Fast kernels. Each is held to its op's reference kernel, which lives
//! with the op in `ir::ops` (the oracle for every optimized kernel and
//! pass).

pub mod cpu;
