//! Kernels. `reference` holds the plain, obviously correct loops that serve as
//! the oracle for every optimized kernel and pass.

pub mod cpu;
pub mod reference;
