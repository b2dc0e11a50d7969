//! The CPU runtime (being written): execution plan, arena memory planning,
//! fast kernels with reference fallback, threads.
