//! Model summaries for `mlc inspect`.
