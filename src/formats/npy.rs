//! NumPy `.npy` / `.npz` reading and writing.
//!
//! An `.npy` file is a 6-byte magic (`\x93NUMPY`), a format version (1.0, 2.0
//! or 3.0), a little-endian header length (2 bytes in 1.0, 4 bytes after) and a
//! header that is a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`, followed by
//! the raw elements. We parse the dict with a tiny literal parser, map `descr`
//! onto a [`DType`] (little-, big- or native-endian; big-endian data is byte
//! swapped on read), check the declared size against what the file holds
//! *before* allocating anything of that size, then decode the elements in
//! fixed-size chunks. Fortran-ordered arrays are transposed into C order. An
//! `.npz` file is a zip archive of `.npy` members (stored by `np.savez`,
//! deflated by `np.savez_compressed`); both are read. Writes always produce
//! little-endian C-order arrays (format 1.0, or 2.0 for enormous headers) the
//! way `np.save` does, into a temporary file that is renamed over the target
//! only once it is complete.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use half::f16;

use crate::ir::tensor::checked_numel;
use crate::ir::TensorData;
use crate::{DType, Error, Result, Tensor};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers longer than this are refused (numpy itself refuses 10 000 bytes by
/// default); a real header is well under 1 KiB.
const MAX_HEADER_LEN: usize = 1 << 20;
/// Most dimensions an array may have (numpy's own limit is 64).
const MAX_RANK: usize = 64;
/// Nesting limit of the header literal parser.
const MAX_DEPTH: usize = 8;
/// Bytes decoded per read.
const CHUNK: usize = 1 << 16;
/// Elements reserved up front when the true size is not yet proven by the
/// stream (npz members whose declared size may lie); the vector grows as data
/// actually arrives.
const UNTRUSTED_RESERVE: usize = 1 << 20;
/// Header alignment `np.save` uses.
const ALIGN: usize = 64;

fn npy_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads one array from an `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(file);
    read_npy_from(&mut r, path, len, true)
}

/// Reads one array from the bytes of an `.npy` file; `what` names the source
/// in error messages.
pub fn read_npy_bytes(bytes: &[u8], what: &Path) -> Result<Tensor> {
    let mut r = bytes;
    read_npy_from(&mut r, what, bytes.len() as u64, true)
}

/// Writes `t` as an `.npy` file (little-endian, C order), atomically.
/// Element types numpy lacks (bf16, float8, float4, 4- and 2-bit integers)
/// are refused.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    check_writable(path, t)?;
    crate::fsutil::write_atomic(path, |w| write_npy_to(w, t))
}

/// The bytes of an `.npy` file holding `t`; `Error::Npy` for element types
/// numpy lacks.
pub fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    check_writable(Path::new("<memory>"), t)?;
    let mut out = Vec::with_capacity(t.size_bytes() + 128);
    // Writing into a Vec cannot fail.
    let _ = write_npy_to(&mut out, t);
    Ok(out)
}

/// Refuses tensors whose element type has no numpy dtype.
fn check_writable(path: &Path, t: &Tensor) -> Result<()> {
    match descr(t.dtype()) {
        Some(_) => Ok(()),
        None => Err(npy_err(
            path,
            format!(
                "cannot write a {} tensor: numpy has no {} type (cast it to f32 first)",
                t.dtype(),
                t.dtype()
            ),
        )),
    }
}

/// Reads every array of an `.npz` archive (`np.savez` or
/// `np.savez_compressed`), in archive order. Names lose their `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
            Error::io(path, e)
        }
        e => npy_err(path, format!("not a readable npz (zip) archive: {e}")),
    };
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    // The zip reader keys members by name, so a name listed twice hides one
    // of them: the directory's own count tells.
    if let Some(listed) = central_directory_count(path) {
        if listed > archive.len() as u64 {
            return Err(npy_err(
                path,
                format!(
                    "the archive lists {listed} members but only {} distinct names: a member is named twice",
                    archive.len()
                ),
            ));
        }
    }
    let mut out = Vec::with_capacity(archive.len().min(1024));
    let mut names = std::collections::HashSet::new();
    // All members together stay within the memory budget.
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        if entry.is_dir() {
            continue;
        }
        let entry_name = entry.name().to_string();
        let what = path.join(&entry_name);
        let name = entry_name
            .strip_suffix(".npy")
            .unwrap_or(&entry_name)
            .to_string();
        if !names.insert(name.clone()) {
            return Err(npy_err(
                path,
                format!("the archive holds array '{name}' twice"),
            ));
        }
        let declared = entry.size();
        let t = read_npy_from(&mut entry, &what, declared, false)?;
        total += t.size_bytes() as u64;
        crate::limits::check(
            || format!("{}: the arrays read so far", path.display()),
            Some(total),
        )?;
        // Drain the member so the zip reader verifies its CRC.
        io::copy(&mut entry, &mut io::sink())
            .map_err(|e| npy_err(&what, format!("corrupt archive member: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

/// The member count an archive's end-of-central-directory record gives
/// (the zip64 record's when the classic one is saturated); `None` when the
/// record cannot be found (the zip reader then reports the damage).
fn central_directory_count(path: &Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const ZIP64_LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // The record (22 bytes) ends the file, after a comment of < 64 KiB.
    let tail_len = len.min(22 + 65_535 + 20);
    f.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail).ok()?;
    let at = (0..tail.len().checked_sub(21)?)
        .rev()
        .find(|&i| tail[i..i + 4] == EOCD)?;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let count = u16_at(&tail, at + 10);
    if count != u16::MAX {
        return Some(u64::from(count));
    }
    let loc = at.checked_sub(20)?;
    if tail[loc..loc + 4] != ZIP64_LOCATOR {
        return None;
    }
    let offset = u64::from_le_bytes(tail[loc + 8..loc + 16].try_into().ok()?);
    f.seek(SeekFrom::Start(offset.checked_add(32)?)).ok()?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).ok()?;
    Some(u64::from_le_bytes(n))
}

/// Writes named arrays as an uncompressed `.npz` archive (like `np.savez`),
/// atomically. Each name gets a `.npy` suffix inside the archive.
pub fn write_npz(path: &Path, arrays: &[(String, Tensor)]) -> Result<()> {
    for (i, (name, t)) in arrays.iter().enumerate() {
        check_writable(&path.join(name), t)?;
        if name.is_empty() {
            return Err(npy_err(path, format!("array {i} has an empty name")));
        }
        if arrays[..i].iter().any(|(n, _)| n == name) {
            return Err(npy_err(path, format!("array name '{name}' is used twice")));
        }
    }
    let (tmp, file) = crate::fsutil::create_temp(path)?;
    let result = (|| -> io::Result<()> {
        let mut zw = zip::ZipWriter::new(BufWriter::new(file));
        for (name, t) in arrays {
            let large = t.size_bytes() as u64 + 1024 >= u32::MAX as u64;
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(large);
            zw.start_file(format!("{name}.npy"), opts)
                .map_err(io::Error::other)?;
            write_npy_to(&mut zw, t)?;
        }
        let w = zw.finish().map_err(io::Error::other)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    crate::fsutil::finish_temp(path, &tmp, result)
}

// ---------------------------------------------------------------- reading

/// Byte order of multi-byte elements in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

/// The parsed `.npy` header.
#[derive(Debug)]
struct Header {
    dtype: DType,
    endian: Endian,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &Path, msg: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            npy_err(what, msg.to_string())
        } else {
            npy_err(what, format!("read failed: {e}"))
        }
    })
}

/// Reads the preamble and header; `avail` is the number of bytes the source
/// claims to hold. Returns the header and its total length in bytes.
fn read_header<R: Read>(r: &mut R, what: &Path, avail: u64) -> Result<(Header, u64)> {
    let mut pre = [0u8; 8];
    read_exact_or(
        r,
        &mut pre,
        what,
        "not an .npy file: shorter than the 8-byte preamble",
    )?;
    if &pre[..6] != MAGIC {
        return Err(npy_err(
            what,
            "not an .npy file: missing the \\x93NUMPY magic",
        ));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, prefix_len) = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or(r, &mut b, what, "truncated .npy preamble")?;
            (u16::from_le_bytes(b) as usize, 10usize)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or(r, &mut b, what, "truncated .npy preamble")?;
            (u32::from_le_bytes(b) as usize, 12usize)
        }
        _ => {
            return Err(npy_err(
                what,
                format!("unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are)"),
            ))
        }
    };
    if minor != 0 {
        return Err(npy_err(
            what,
            format!("unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are)"),
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(npy_err(
            what,
            format!("header of {header_len} bytes is implausibly long (limit {MAX_HEADER_LEN})"),
        ));
    }
    let total = (prefix_len + header_len) as u64;
    if total > avail {
        return Err(npy_err(
            what,
            format!(
                "truncated header: it declares {header_len} bytes but the file has only {}",
                avail.saturating_sub(prefix_len as u64)
            ),
        ));
    }
    let mut raw = vec![0u8; header_len];
    read_exact_or(r, &mut raw, what, "truncated header")?;
    let text: String = if major == 3 {
        String::from_utf8(raw).map_err(|_| npy_err(what, "header is not valid UTF-8"))?
    } else {
        // Versions 1 and 2 are latin-1: every byte is one char.
        raw.iter().map(|&b| b as char).collect()
    };
    let header = parse_header(&text).map_err(|m| npy_err(what, format!("bad header: {m}")))?;
    Ok((header, total))
}

/// Reads a whole array. `avail` is the byte count the source holds (a file's
/// size) or claims to hold (an npz member); `trusted` says whether it is known
/// to be true, which lets the data vector be allocated at its final size.
fn read_npy_from<R: Read>(r: &mut R, what: &Path, avail: u64, trusted: bool) -> Result<Tensor> {
    let (h, header_bytes) = read_header(r, what, avail)?;
    let numel = checked_numel(&h.shape)
        .filter(|&n| n.checked_mul(h.dtype.size()).is_some())
        .ok_or_else(|| npy_err(what, format!("shape {:?} is too large", h.shape)))?;
    let data_bytes = (numel * h.dtype.size()) as u64;
    let left = avail.saturating_sub(header_bytes);
    if data_bytes > left {
        return Err(npy_err(
            what,
            format!(
                "data is truncated: shape {:?} of {} needs {data_bytes} bytes but only {left} follow the header",
                h.shape, h.dtype
            ),
        ));
    }
    if data_bytes < left {
        return Err(npy_err(
            what,
            format!(
                "{} bytes follow the data of shape {:?} of {} (a truncated header or a damaged file)",
                left - data_bytes,
                h.shape,
                h.dtype
            ),
        ));
    }
    crate::limits::check(
        || {
            format!(
                "{}: an array of shape {:?} ({})",
                what.display(),
                h.shape,
                h.dtype
            )
        },
        Some(data_bytes),
    )?;
    let reserve = if trusted {
        numel
    } else {
        numel.min(UNTRUSTED_RESERVE)
    };
    let data = read_data(r, h.dtype, h.endian, numel, reserve, what)?;
    let data = if h.fortran_order && h.shape.len() > 1 {
        data.gather(&fortran_to_c_indices(&h.shape))
    } else {
        data
    };
    // The element count was read to match the shape exactly.
    Tensor::new(h.shape, data).map_err(|e| Error::Internal(format!("npy: {e}")))
}

/// For each C-order position, the position of the same element in
/// Fortran-order storage.
fn fortran_to_c_indices(shape: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut fstrides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstrides[k] = fstrides[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(idx.iter().zip(&fstrides).map(|(i, s)| i * s).sum());
        // Advance the C-order multi-index (last axis fastest).
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Decodes `n` elements of `N` bytes each with `conv`, in chunks.
fn read_elems<R: Read, T, const N: usize>(
    r: &mut R,
    n: usize,
    reserve: usize,
    conv: impl Fn([u8; N]) -> T,
    what: &Path,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(reserve);
    let mut buf = vec![0u8; CHUNK];
    let per_chunk = CHUNK / N;
    let mut left = n;
    while left > 0 {
        let k = left.min(per_chunk);
        read_exact_or(
            r,
            &mut buf[..k * N],
            what,
            &format!("data is truncated: it ends before the {n} elements its shape needs"),
        )?;
        for c in buf[..k * N].chunks_exact(N) {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            out.push(conv(a));
        }
        left -= k;
    }
    Ok(out)
}

fn read_data<R: Read>(
    r: &mut R,
    dtype: DType,
    endian: Endian,
    n: usize,
    reserve: usize,
    what: &Path,
) -> Result<TensorData> {
    let big = endian == Endian::Big;
    macro_rules! num {
        ($t:ty, $n:literal, $variant:ident) => {
            TensorData::$variant(read_elems::<_, $t, $n>(
                r,
                n,
                reserve,
                |b| {
                    if big {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    }
                },
                what,
            )?)
        };
    }
    Ok(match dtype {
        DType::F32 => num!(f32, 4, F32),
        DType::F64 => num!(f64, 8, F64),
        DType::I8 => num!(i8, 1, I8),
        DType::I16 => num!(i16, 2, I16),
        DType::I32 => num!(i32, 4, I32),
        DType::I64 => num!(i64, 8, I64),
        DType::U8 => num!(u8, 1, U8),
        DType::U16 => num!(u16, 2, U16),
        DType::U32 => num!(u32, 4, U32),
        DType::U64 => num!(u64, 8, U64),
        DType::F16 => TensorData::F16(read_elems::<_, f16, 2>(
            r,
            n,
            reserve,
            |b| {
                f16::from_bits(if big {
                    u16::from_be_bytes(b)
                } else {
                    u16::from_le_bytes(b)
                })
            },
            what,
        )?),
        // numpy reads any nonzero byte as True.
        DType::Bool => TensorData::Bool(read_elems::<_, bool, 1>(
            r,
            n,
            reserve,
            |b| b[0] != 0,
            what,
        )?),
        // parse_descr never yields these.
        other => return Err(npy_err(what, format!("numpy has no {other} type"))),
    })
}

// ---------------------------------------------------------------- header

/// A Python literal as it appears in an `.npy` header.
#[derive(Debug, Clone, PartialEq)]
enum PyVal {
    Str(String),
    Bool(bool),
    None,
    Int(i128),
    Tuple(Vec<PyVal>),
    List(Vec<PyVal>),
    Dict(Vec<(PyVal, PyVal)>),
}

struct LitParser<'a> {
    s: &'a [char],
    pos: usize,
}

impl LitParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "expected '{c}' at offset {}, found '{x}'",
                self.pos
            )),
            None => Err(format!(
                "expected '{c}' at offset {}, found the end",
                self.pos
            )),
        }
    }

    /// Comma-separated values up to `close`, trailing comma allowed. Returns
    /// the items and whether a comma was seen (tells `(1,)` from `(1)`).
    fn seq(&mut self, close: char, depth: usize) -> Result<(Vec<PyVal>, bool), String> {
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, comma));
            }
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    comma = true;
                }
                Some(c) if c == close => {}
                Some(c) => return Err(format!("unexpected '{c}' at offset {}", self.pos)),
                None => return Err(format!("missing '{close}'")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyVal, String> {
        if depth > MAX_DEPTH {
            return Err("literal nested too deeply".into());
        }
        match self.peek() {
            None => Err("unexpected end of header".into()),
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.s.get(self.pos) {
                        None => return Err("unterminated string".into()),
                        Some(&c) if c == q => {
                            self.pos += 1;
                            return Ok(PyVal::Str(s));
                        }
                        Some('\\') => {
                            let c = self.s.get(self.pos + 1).ok_or("unterminated string")?;
                            s.push(*c);
                            self.pos += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some('(') => {
                self.pos += 1;
                let (items, comma) = self.seq(')', depth)?;
                if items.len() == 1 && !comma {
                    // A parenthesised expression, not a tuple.
                    Ok(items.into_iter().next().unwrap_or(PyVal::None))
                } else {
                    Ok(PyVal::Tuple(items))
                }
            }
            Some('[') => {
                self.pos += 1;
                Ok(PyVal::List(self.seq(']', depth)?.0))
            }
            Some('{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some('}') {
                        self.pos += 1;
                        return Ok(PyVal::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    self.expect(':')?;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some('}') => {}
                        Some(c) => return Err(format!("unexpected '{c}' at offset {}", self.pos)),
                        None => return Err("missing '}'".into()),
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                let start = self.pos;
                self.pos += 1;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let text: String = self.s[start..self.pos].iter().collect();
                // Python 2 wrote long integers as `3L`.
                if matches!(self.s.get(self.pos), Some('L' | 'l')) {
                    self.pos += 1;
                }
                text.parse::<i128>()
                    .map(PyVal::Int)
                    .map_err(|_| format!("bad integer '{text}'"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                let word: String = self.s[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(PyVal::Bool(true)),
                    "False" => Ok(PyVal::Bool(false)),
                    "None" => Ok(PyVal::None),
                    _ => Err(format!("unexpected word '{word}'")),
                }
            }
            Some(c) => Err(format!("unexpected '{c}' at offset {}", self.pos)),
        }
    }
}

/// Maps a numpy `descr` string onto a dtype and byte order.
fn parse_descr(d: &str) -> Result<(DType, Endian), String> {
    let native = if cfg!(target_endian = "big") {
        Endian::Big
    } else {
        Endian::Little
    };
    let (order, code) = match d.chars().next() {
        Some('<') => (Some(Endian::Little), &d[1..]),
        Some('>') => (Some(Endian::Big), &d[1..]),
        Some('=') => (Some(native), &d[1..]),
        Some('|') => (None, &d[1..]),
        _ => (Some(native), d),
    };
    let dtype = match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" | "e" => DType::F16,
        "i1" | "b" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" | "B" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" | "?" => DType::Bool,
        _ => {
            let kind = match code.chars().next() {
                Some('c') => " (complex numbers)",
                Some('U' | 'S' | 'a') => " (strings)",
                Some('O') => " (Python objects)",
                Some('M' | 'm') => " (dates/times)",
                Some('V') => " (raw bytes / structured)",
                Some('f') => " (this float width)",
                _ => "",
            };
            return Err(format!(
                "unsupported dtype '{d}'{kind}; mlc reads f2/f4/f8, i1/i2/i4/i8, u1/u2/u4/u8 and b1"
            ));
        }
    };
    let endian = match order {
        Some(e) => e,
        None if dtype.size() == 1 => Endian::Little,
        None => {
            return Err(format!(
                "dtype '{d}' of {} bytes has no byte order",
                dtype.size()
            ))
        }
    };
    Ok((dtype, endian))
}

fn parse_header(text: &str) -> Result<Header, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = LitParser { s: &chars, pos: 0 };
    let v = p.value(0)?;
    if p.peek().is_some() {
        return Err(format!(
            "unexpected text after the dict at offset {}",
            p.pos
        ));
    }
    let PyVal::Dict(items) = v else {
        return Err("not a dict".into());
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (k, v) in items {
        match k {
            PyVal::Str(k) if k == "descr" => descr = Some(v),
            PyVal::Str(k) if k == "fortran_order" => fortran = Some(v),
            PyVal::Str(k) if k == "shape" => shape = Some(v),
            other => return Err(format!("unexpected key {other:?}")),
        }
    }
    let (dtype, endian) = match descr {
        Some(PyVal::Str(d)) => parse_descr(&d)?,
        Some(PyVal::List(_)) => return Err("structured (record) dtypes are not supported".into()),
        Some(other) => return Err(format!("'descr' is not a string: {other:?}")),
        None => return Err("missing 'descr'".into()),
    };
    let fortran_order = match fortran {
        Some(PyVal::Bool(b)) => b,
        Some(other) => return Err(format!("'fortran_order' is not True/False: {other:?}")),
        None => return Err("missing 'fortran_order'".into()),
    };
    let dims = match shape {
        Some(PyVal::Tuple(d)) => d,
        Some(other) => return Err(format!("'shape' is not a tuple: {other:?}")),
        None => return Err("missing 'shape'".into()),
    };
    if dims.len() > MAX_RANK {
        return Err(format!("{} dimensions (limit {MAX_RANK})", dims.len()));
    }
    let shape = dims
        .into_iter()
        .map(|d| match d {
            PyVal::Int(n) => usize::try_from(n).map_err(|_| format!("bad dimension {n}")),
            other => Err(format!("dimension is not an integer: {other:?}")),
        })
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(Header {
        dtype,
        endian,
        fortran_order,
        shape,
    })
}

// ---------------------------------------------------------------- writing

/// numpy's spelling of a dtype; `None` for types numpy lacks.
fn descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

/// The preamble and padded header for `t`, exactly as `np.save` writes it.
fn header_bytes(t: &Tensor, descr: &str) -> Vec<u8> {
    let shape = match t.shape() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr
    );
    // numpy: padlen = ALIGN - ((magic + version + len field + hlen) % ALIGN),
    // where hlen counts the final newline.
    let fixed = |len_field: usize| MAGIC.len() + 2 + len_field;
    let (major, len_field) = if fixed(2) + dict.len() + 1 + ALIGN <= u16::MAX as usize {
        (1u8, 2usize)
    } else {
        (2u8, 4usize)
    };
    let pad = ALIGN - ((fixed(len_field) + dict.len() + 1) % ALIGN);
    dict.extend(std::iter::repeat_n(' ', pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(fixed(len_field) + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out
}

fn write_npy_to<W: Write>(w: &mut W, t: &Tensor) -> io::Result<()> {
    // The public writers refuse types numpy lacks first (check_writable).
    let no_type = || io::Error::other(format!("numpy has no {} type", t.dtype()));
    w.write_all(&header_bytes(t, descr(t.dtype()).ok_or_else(no_type)?))?;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 8);
    macro_rules! emit {
        ($v:expr, $f:expr) => {{
            for x in $v.iter() {
                buf.extend_from_slice(&$f(x));
                if buf.len() >= CHUNK {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
        }};
    }
    match t.data() {
        TensorData::F32(v) => emit!(v, |x: &f32| x.to_le_bytes()),
        TensorData::F64(v) => emit!(v, |x: &f64| x.to_le_bytes()),
        TensorData::F16(v) => emit!(v, |x: &f16| x.to_bits().to_le_bytes()),
        TensorData::I8(v) => emit!(v, |x: &i8| x.to_le_bytes()),
        TensorData::I16(v) => emit!(v, |x: &i16| x.to_le_bytes()),
        TensorData::I32(v) => emit!(v, |x: &i32| x.to_le_bytes()),
        TensorData::I64(v) => emit!(v, |x: &i64| x.to_le_bytes()),
        TensorData::U8(v) => emit!(v, |x: &u8| x.to_le_bytes()),
        TensorData::U16(v) => emit!(v, |x: &u16| x.to_le_bytes()),
        TensorData::U32(v) => emit!(v, |x: &u32| x.to_le_bytes()),
        TensorData::U64(v) => emit!(v, |x: &u64| x.to_le_bytes()),
        TensorData::Bool(v) => emit!(v, |x: &bool| [*x as u8]),
        _ => return Err(no_type()),
    }
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(dtype: DType) -> Tensor {
        let shape = vec![2, 3];
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0, -1.5, f32::INFINITY, f32::NAN, 1e-30, 7.0]),
            DType::F64 => TensorData::F64(vec![0.0, -1.5, f64::NEG_INFINITY, 1e300, 2.0, 7.0]),
            DType::F16 => TensorData::F16(
                [0.0f32, -1.5, 65504.0, 0.25, 2.0, 7.0]
                    .iter()
                    .map(|&x| f16::from_f32(x))
                    .collect(),
            ),
            DType::I8 => TensorData::I8(vec![i8::MIN, -1, 0, 1, 2, i8::MAX]),
            DType::I16 => TensorData::I16(vec![i16::MIN, -1, 0, 1, 2, i16::MAX]),
            DType::I32 => TensorData::I32(vec![i32::MIN, -1, 0, 1, 2, i32::MAX]),
            DType::I64 => TensorData::I64(vec![i64::MIN, -1, 0, 1, 2, i64::MAX]),
            DType::U8 => TensorData::U8(vec![0, 1, 2, 3, 128, u8::MAX]),
            DType::U16 => TensorData::U16(vec![0, 1, 2, 3, 1 << 15, u16::MAX]),
            DType::U32 => TensorData::U32(vec![0, 1, 2, 3, 1 << 31, u32::MAX]),
            DType::U64 => TensorData::U64(vec![0, 1, 2, 3, 1 << 63, u64::MAX]),
            DType::Bool => TensorData::Bool(vec![true, false, true, false, false, true]),
            other => TensorData::from_f64(other, &[0.0, -1.5, 1.0, 0.5, 2.0, 7.0]),
        };
        Tensor::new(shape, data).unwrap()
    }

    /// The dtypes numpy has.
    fn numpy_dtypes() -> Vec<DType> {
        DType::ALL
            .into_iter()
            .filter(|d| descr(*d).is_some())
            .collect()
    }

    #[test]
    fn types_numpy_lacks_are_refused() {
        let dir = tmpdir("lowp");
        for d in DType::ALL {
            if descr(d).is_some() {
                continue;
            }
            let t = sample(d);
            let e = npy_bytes(&t).unwrap_err().to_string();
            assert!(e.contains(&format!("numpy has no {d} type")), "{e}");
            let f = dir.join("x.npy");
            assert!(matches!(write_npy(&f, &t), Err(Error::Npy { .. })), "{d}");
            assert!(!f.exists());
            let z = dir.join("x.npz");
            let arrays = [("ok".to_string(), Tensor::scalar_f32(1.0)), ("w".into(), t)];
            assert!(
                matches!(write_npz(&z, &arrays), Err(Error::Npy { .. })),
                "{d}"
            );
            assert!(!z.exists());
        }
        assert_eq!(numpy_dtypes().len(), 12);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Equality that treats NaN as equal to NaN (bitwise for floats).
    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.shape() == b.shape()
            && a.dtype() == b.dtype()
            && match (a.data(), b.data()) {
                (TensorData::F32(x), TensorData::F32(y)) => {
                    x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
                }
                (TensorData::F64(x), TensorData::F64(y)) => {
                    x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
                }
                _ => a == b,
            }
    }

    fn err_msg(r: Result<Tensor>) -> String {
        match r {
            Err(Error::Npy { message, .. }) => message,
            other => panic!("expected an Npy error, got {other:?}"),
        }
    }

    fn p() -> &'static Path {
        Path::new("x.npy")
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlc-npy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn header_matches_numpy() {
        // np.save(f, np.arange(3, dtype='<f4')): header padded to 64 bytes.
        let t = Tensor::from_f32(vec![3], vec![0.0, 1.0, 2.0]).unwrap();
        let b = npy_bytes(&t).unwrap();
        let expected = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 118);
        assert_eq!(&b[10..10 + expected.len()], expected.as_bytes());
        assert_eq!(b[127], b'\n');
        assert_eq!(b.len(), 128 + 12);
        assert_eq!(&b[128..132], &0f32.to_le_bytes());
        // 0-d and rank-2 shapes are spelled like Python tuples.
        let s = npy_bytes(&Tensor::scalar_i64(5)).unwrap();
        assert!(String::from_utf8_lossy(&s).contains("'shape': (), }"));
        let m = npy_bytes(&Tensor::zeros(DType::U8, vec![2, 0, 4])).unwrap();
        assert!(String::from_utf8_lossy(&m).contains("'descr': '|u1'"));
        assert!(String::from_utf8_lossy(&m).contains("'shape': (2, 0, 4), }"));
    }

    #[test]
    fn round_trip_every_dtype_bytes_and_file() {
        let dir = tmpdir("rt");
        for d in numpy_dtypes() {
            let t = sample(d);
            let back = read_npy_bytes(&npy_bytes(&t).unwrap(), p()).unwrap();
            assert!(same(&t, &back), "{d}: {back:?}");
            let f = dir.join(format!("{d}.npy"));
            write_npy(&f, &t).unwrap();
            assert!(same(&t, &read_npy(&f).unwrap()), "{d} via file");
            // Other shapes: 0-d, empty, rank 4.
            for shape in [vec![], vec![0], vec![3, 0, 2], vec![1, 2, 1, 3]] {
                let n = checked_numel(&shape).unwrap();
                let t = Tensor::new(shape.clone(), sample(d).data().gather(&vec![5; n])).unwrap();
                let back = read_npy_bytes(&npy_bytes(&t).unwrap(), p()).unwrap();
                assert!(same(&t, &back), "{d} {shape:?}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_leave_no_temp_files_and_replace_targets() {
        let dir = tmpdir("atomic");
        let f = dir.join("a.npy");
        write_npy(&f, &Tensor::scalar_f32(1.0)).unwrap();
        write_npy(&f, &Tensor::scalar_f32(2.0)).unwrap();
        assert_eq!(read_npy(&f).unwrap().as_f32().unwrap(), &[2.0]);
        let z = dir.join("a.npz");
        write_npz(&z, &[("w".into(), sample(DType::I16))]).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A write into a missing directory fails cleanly with an Io error.
        let bad = dir.join("missing").join("b.npy");
        assert!(matches!(
            write_npy(&bad, &Tensor::scalar_f32(1.0)),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npz_round_trip_keeps_order_and_names() {
        let dir = tmpdir("npz");
        let arrays: Vec<(String, Tensor)> = numpy_dtypes()
            .iter()
            .rev()
            .map(|&d| (format!("arr_{d}"), sample(d)))
            .collect();
        let z = dir.join("all.npz");
        write_npz(&z, &arrays).unwrap();
        let back = read_npz(&z).unwrap();
        assert_eq!(back.len(), arrays.len());
        for ((n1, t1), (n2, t2)) in arrays.iter().zip(&back) {
            assert_eq!(n1, n2);
            assert!(same(t1, t2), "{n1}");
        }
        // Empty archives are fine; duplicate and empty names are refused.
        write_npz(&z, &[]).unwrap();
        assert!(read_npz(&z).unwrap().is_empty());
        let t = Tensor::scalar_f32(0.0);
        let dup = [("a".to_string(), t.clone()), ("a".to_string(), t.clone())];
        assert!(matches!(write_npz(&z, &dup), Err(Error::Npy { .. })));
        assert!(matches!(
            write_npz(&z, &[(String::new(), t)]),
            Err(Error::Npy { .. })
        ));
        // Not a zip at all.
        std::fs::write(&z, b"hello").unwrap();
        assert!(matches!(read_npz(&z), Err(Error::Npy { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn raw(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[version, 0]);
        if version == 1 {
            b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn reads_fortran_big_endian_and_versions() {
        // np.asfortranarray(np.arange(6).reshape(2, 3)) stores 0 3 1 4 2 5.
        let data: Vec<u8> = [0i32, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let h = "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }\n";
        let t = read_npy_bytes(&raw(1, h, &data), p()).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        // Big-endian is byte-swapped; '=' is native; odd spacing and "3L".
        let be: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let h = "{\"shape\":(2L,),\"fortran_order\":False,\"descr\":\">f8\"}";
        let t = read_npy_bytes(&raw(2, h, &be), p()).unwrap();
        assert_eq!(t.to_f64_vec(), vec![1.5, -2.0]);
        let ne: Vec<u8> = [7u16, 9].iter().flat_map(|x| x.to_ne_bytes()).collect();
        let h = "{'descr': '=u2', 'fortran_order': False, 'shape': (2,)}";
        let t = read_npy_bytes(&raw(3, h, &ne), p()).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![7, 9]);
        // Bytes after the data (numpy ignores them) mean a damaged file.
        let h = "{'descr': '|b1', 'fortran_order': False, 'shape': ()}";
        let m = err_msg(read_npy_bytes(&raw(1, h, &[2, 0, 0]), p()));
        assert!(m.contains("2 bytes follow the data"), "{m}");
        let t = read_npy_bytes(&raw(1, h, &[2]), p()).unwrap();
        assert_eq!(t.as_bool().unwrap(), &[true]);
    }

    #[test]
    fn hostile_inputs_give_npy_errors() {
        let good = npy_bytes(&sample(DType::F32)).unwrap();
        // Every truncation of a valid file fails cleanly.
        for n in 0..good.len() {
            let m = err_msg(read_npy_bytes(&good[..n], p()));
            assert!(!m.is_empty());
        }
        assert!(err_msg(read_npy_bytes(&good[..good.len() - 1], p())).contains("truncated"));
        assert!(err_msg(read_npy_bytes(b"PK\x03\x04 not npy", p())).contains("magic"));
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(err_msg(read_npy_bytes(&v9, p())).contains("version 9.0"));
        // Header length larger than the file.
        let mut long = good.clone();
        long[8] = 0xff;
        long[9] = 0xff;
        assert!(err_msg(read_npy_bytes(&long, p())).contains("truncated header"));
        let cases = [
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000000000)}", "too large"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000)}", "truncated"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999999999999999999999,)}", "bad integer"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "bad dimension"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,)}", "unexpected"),
            ("{'descr': '<f4', 'fortran_order': False}", "missing 'shape'"),
            ("{'descr': '<f4', 'fortran_order': 0, 'shape': ()}", "fortran_order"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}", "unexpected key"),
            ("{'descr': '<c8', 'fortran_order': False, 'shape': ()}", "complex"),
            ("{'descr': '|O', 'fortran_order': False, 'shape': ()}", "objects"),
            ("{'descr': '|f4', 'fortran_order': False, 'shape': ()}", "byte order"),
            ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}", "structured"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': ()", "missing '}'"),
            ("{'descr': '<f4 ", "unterminated"),
            ("[1, 2]", "not a dict"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': ()} junk", "after the dict"),
            ("((((((((((((((((((((1))))))))))))))))))))", "nested"),
            ("", "end of header"),
        ];
        for (h, want) in cases {
            let m = err_msg(read_npy_bytes(&raw(1, h, &[0; 8]), p()));
            assert!(m.contains(want), "{h}: {m}");
        }
        // Rank limit.
        let h = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({})}}",
            "1,".repeat(65)
        );
        assert!(err_msg(read_npy_bytes(&raw(1, &h, &[0; 8]), p())).contains("dimensions"));
        // Non-UTF-8 v3 header.
        let mut b = raw(3, "{'descr': '<f4'}", &[]);
        b[14] = 0xff;
        assert!(err_msg(read_npy_bytes(&b, p())).contains("UTF-8"));
    }

    #[test]
    fn hostile_npz_members_give_npy_errors() {
        let dir = tmpdir("badnpz");
        let z = dir.join("bad.npz");
        let f = File::create(&z).unwrap();
        let mut zw = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zw.start_file("x.npy", opts).unwrap();
        let good = npy_bytes(&sample(DType::I64)).unwrap();
        zw.write_all(&good[..good.len() - 3]).unwrap();
        zw.finish().unwrap();
        match read_npz(&z) {
            Err(Error::Npy { path, message }) => {
                assert!(path.ends_with("bad.npz/x.npy"), "{path:?}");
                assert!(message.contains("truncated"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_io_error() {
        assert!(matches!(
            read_npy(Path::new("/nonexistent/mlc/x.npy")),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            read_npz(Path::new("/nonexistent/mlc/x.npz")),
            Err(Error::Io { .. })
        ));
    }
}
