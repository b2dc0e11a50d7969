//! `-` as a file name on the command line: a model or input file read from
//! stdin, an output written to stdout. Both pass through a private
//! temporary directory, so the library keeps working on paths (the ONNX and
//! bundle readers need the whole file; writers rename into place).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use mlc::Error;

use crate::cli::{Command, Emit, InputArgs};

/// The files standing in for stdin and stdout in one command.
#[derive(Default)]
pub(crate) struct Stdio {
    dir: Option<PathBuf>,
    stdin_taken: bool,
    /// Spooled outputs, copied to stdout by [`Stdio::flush`].
    outputs: Vec<PathBuf>,
}

fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Stdio {
    fn dir(&mut self) -> Result<PathBuf, Error> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let d = std::env::temp_dir().join(format!("mlc-stdio-{}-{nanos}", std::process::id()));
        // create_dir, not create_dir_all: a directory already there (another
        // process's, or planted) is an error, never shared.
        std::fs::create_dir(&d).map_err(|e| Error::io(&d, e))?;
        self.dir = Some(d.clone());
        Ok(d)
    }

    /// `path`, or for `-` a file holding stdin (at most the memory limit),
    /// named by what its first bytes say it is (.mlc, .npz, .npy or .onnx).
    pub(crate) fn input(&mut self, path: &Path) -> Result<PathBuf, Error> {
        if !is_dash(path) {
            return Ok(path.to_path_buf());
        }
        if self.stdin_taken {
            return Err(Error::Usage(
                "only one file can be read from stdin (-)".into(),
            ));
        }
        self.stdin_taken = true;
        let limit = mlc::api::max_memory();
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(Path::new("<stdin>"), e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::Usage(format!(
                "stdin holds more than the memory limit ({}; --max-memory)",
                mlc::api::human_bytes(limit)
            )));
        }
        let name = if mlc::api::is_bundle(&bytes) {
            "stdin.mlc"
        } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            "stdin.npz"
        } else if bytes.starts_with(b"\x93NUMPY") {
            "stdin.npy"
        } else {
            "stdin.onnx"
        };
        let file = self.dir()?.join(name);
        std::fs::write(&file, &bytes).map_err(|e| Error::io(&file, e))?;
        Ok(file)
    }

    /// `path`, or for `-` a spooled file named `name` (its extension
    /// picks the format) that [`Stdio::flush`] copies to stdout.
    pub(crate) fn output(&mut self, path: &Path, name: &str) -> Result<PathBuf, Error> {
        if !is_dash(path) {
            return Ok(path.to_path_buf());
        }
        let file = self.dir()?.join(name);
        self.outputs.push(file.clone());
        Ok(file)
    }

    /// Copies the spooled outputs that were written to stdout, in the
    /// order they were named.
    pub(crate) fn flush(&self) -> Result<(), Error> {
        let mut out = std::io::stdout().lock();
        for f in self.outputs.iter().filter(|f| f.exists()) {
            let mut file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
            std::io::copy(&mut file, &mut out).map_err(|e| Error::io(Path::new("<stdout>"), e))?;
        }
        out.flush().map_err(|e| Error::io(Path::new("<stdout>"), e))
    }
}

impl Drop for Stdio {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Stdio {
    /// Replaces every `-` among `command`'s file names with its stand-in;
    /// returns whether an output goes to stdout. Refuses `-` where a
    /// command writes files beside its output (reports) or names its
    /// output after its input.
    pub(crate) fn redirect(&mut self, command: &mut Command) -> Result<bool, Error> {
        let refuse = |what: &str| Error::Usage(format!("{what}: give a file name instead of -"));
        match command {
            Command::Inspect { model, .. } => *model = self.input(model)?,
            Command::Compile {
                model,
                output,
                emit,
                ..
            } => {
                *model = self.input(model)?;
                let name = match emit {
                    Some(Emit::Onnx | Emit::OnnxSparse) => "model.onnx",
                    _ => "model.mlc",
                };
                *output = self.output(output, name)?;
            }
            Command::Run {
                model,
                inputs,
                output,
                ..
            } => {
                *model = self.input(model)?;
                self.inputs(inputs)?;
                if let Some(o) = output {
                    *o = self.output(o, "outputs.npz")?;
                }
            }
            Command::Bench {
                model,
                inputs,
                compare,
                ..
            } => {
                for m in model.iter_mut() {
                    *m = self.input(m)?;
                }
                self.inputs(inputs)?;
                for o in compare.output.iter_mut() {
                    *o = self.output(o, "compare.md")?;
                }
                if let Some(o) = &mut compare.html {
                    *o = self.output(o, "compare.html")?;
                }
                if let Some(o) = &mut compare.export_times {
                    *o = self.output(o, "times.json")?;
                }
            }
            Command::Tune {
                model,
                output,
                inputs,
                ..
            } => {
                if is_dash(model) && output.is_none() {
                    return Err(Error::Usage(
                        "tune: a model from stdin (-) needs -o OUT.mlc".into(),
                    ));
                }
                if output.as_deref().is_some_and(is_dash) {
                    return Err(refuse("tune -o (the tuning reports are written beside it)"));
                }
                *model = self.input(model)?;
                self.inputs(inputs)?;
            }
            Command::Compress(a) => {
                if is_dash(&a.output) {
                    return Err(refuse("compress -o (the reports are written beside it)"));
                }
                a.model = self.input(&a.model)?;
            }
            Command::Check(a) => {
                if let Some(m) = &mut a.model {
                    *m = self.input(m)?;
                }
                if let Some(o) = &mut a.junit {
                    *o = self.output(o, "check.xml")?;
                }
                if let Some(o) = &mut a.html {
                    *o = self.output(o, "check.html")?;
                }
            }
            Command::Distill(_) | Command::Passes { .. } | Command::Targets { .. } => {}
            Command::Probe { .. } => {}
        }
        Ok(!self.outputs.is_empty())
    }

    /// An `--inputs -` (a .npz or .npy from stdin).
    fn inputs(&mut self, inputs: &mut InputArgs) -> Result<(), Error> {
        if let Some(f) = &mut inputs.inputs {
            *f = self.input(f)?;
        }
        Ok(())
    }
}
