//! Typed errors of the mlc library. Every variant carries what a user needs to
//! find the problem: the file, the node and its op, the input.

use std::path::PathBuf;

/// One problem found while importing a model. Import collects all of them
/// before failing, so a user sees every unsupported op at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    /// Node name, or the initializer / value name the problem is about.
    pub node: String,
    /// ONNX op type, or "initializer", "input", "graph".
    pub op_type: String,
    pub opset: i64,
    pub message: String,
}

impl std::fmt::Display for ImportProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} '{}' (opset {}): {}",
            self.op_type, self.node, self.opset, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a model mlc can read at all (empty, truncated, not
    /// protobuf, wrong container).
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },

    /// The model parsed but cannot be imported; lists every problem.
    #[error("{} problem{} importing the model: {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Import { problems: Vec<ImportProblem> },

    /// The graph breaks an IR invariant (cycle, undefined input, type clash).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),

    /// Type or shape inference failed, or a kernel rejected its inputs; the
    /// op is named, the node is added by [`Error::at_node`].
    #[error("{op}: {message}")]
    Op { op: &'static str, message: String },

    /// An error that happened while handling one node.
    #[error("node '{node}' ({op}): {message}")]
    AtNode {
        node: String,
        op: &'static str,
        message: String,
        /// The underlying error was a bug in mlc, not bad input.
        internal: bool,
    },

    /// Inputs given to a run do not fit the model.
    #[error("input '{name}': {message}")]
    Input { name: String, message: String },

    /// A size given for a symbolic dim that does not fit the model.
    #[error("dim '{name}': {message}")]
    Dim { name: String, message: String },

    /// A NumPy file that cannot be read or written.
    #[error("{}: {message}", path.display())]
    Npy { path: PathBuf, message: String },

    /// A pipeline recipe that cannot be used (unknown pass or parameter, bad
    /// TOML).
    #[error("recipe: {0}")]
    Recipe(String),

    /// A target name that is neither a built-in target nor `host` nor a
    /// file; lists the names there are.
    #[error("unknown target '{name}' (known: {}; or the path of a target .toml file)", known.join(", "))]
    UnknownTarget { name: String, known: Vec<String> },

    /// A target description that cannot be used (bad TOML, an unknown
    /// key or feature, a size that is not positive); `target` is its file
    /// or name.
    #[error("target {target}: {message}")]
    Target { target: String, message: String },

    /// An error raised while running a pass, or the IR it left behind failing
    /// verification.
    #[error("pass '{pass}': {message}")]
    Pass {
        pass: String,
        message: String,
        /// The pass broke an IR invariant or hit a bug (not the user's input).
        internal: bool,
    },

    /// `--verify` found that a pass changed the model's outputs beyond the
    /// tolerance: a bug in that pass.
    #[error("pass '{pass}' changed the model's outputs: {message}")]
    Drift { pass: String, message: String },

    /// What a model or input asks for would take more memory than the
    /// budget ([`crate::limits`]) allows; refused before allocating.
    #[error("{what} needs {}", over_budget(*bytes, *limit))]
    Budget {
        what: String,
        bytes: u64,
        limit: u64,
    },

    /// `mlc check`: a budget the model must hold does not (exit code
    /// [`crate::api::EXIT_BUDGET_FAILED`]).
    #[error("{failed} of {total} budgets failed")]
    BudgetFailed { failed: usize, total: usize },

    /// A bug in mlc: an invariant that should hold did not.
    #[error("internal error: {0}")]
    Internal(String),

    /// Options that cannot be used together or need something not given.
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Error raised by an op's inference or kernel.
    pub fn op(op: &'static str, message: impl Into<String>) -> Error {
        Error::Op {
            op,
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Adds the node this error happened at.
    pub fn at_node(self, node: &str, op: &'static str) -> Error {
        let internal = !self.is_user_error();
        let message = match self {
            Error::AtNode { .. } => return self,
            Error::Op { message, .. } => message,
            other => other.to_string(),
        };
        Error::AtNode {
            node: node.to_string(),
            op,
            message,
            internal,
        }
    }

    /// The command line's exit code for this error: 2 for the user's
    /// input, 3 for a broken budget (`mlc check`), 1 for a bug in mlc.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BudgetFailed { .. } => 3,
            e if e.is_user_error() => 2,
            _ => 1,
        }
    }

    /// Whether this error is the user's input (exit code 2) rather than a bug
    /// in mlc (exit code 1).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Internal(_) | Error::Drift { .. } => false,
            Error::Pass { internal, .. } => !internal,
            Error::AtNode { internal, .. } => !internal,
            _ => true,
        }
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), with a note
/// of how much was left out: errors quote what they were given (names,
/// attribute values), and a hostile file can make that megabytes long.
pub fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} ... ({} more bytes)", &text[..cut], text.len() - cut).into()
}

/// `"4.0 TiB, over the memory budget of 4.0 GiB (raise it with
/// --max-memory)"`: the one wording of every budget refusal.
pub fn over_budget(bytes: u64, limit: u64) -> String {
    format!(
        "{}, over the memory budget of {} (raise it with --max-memory)",
        human_bytes(bytes),
        human_bytes(limit)
    )
}

/// A byte count for messages: `3.2 GiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if b == u64::MAX {
        return "more than 16 EiB".into();
    }
    format!("{v:.1} {unit}")
}
