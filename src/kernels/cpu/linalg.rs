//! Fast MatMul, Gemm and FusedMatMul on f32 views, all through `sgemm`.
//!
//! MatMul and FusedMatMul follow numpy `matmul`: a 1-D left operand is a
//! row vector and a 1-D right operand a column vector (their unit dim is
//! dropped from the result), and the batch dims broadcast; each output
//! batch is one `sgemm` call at the operands' batch offsets. When B has no
//! batch and A is neither broadcast nor transposed, the batches are stacked
//! into one tall product (`[B·M, K] × [K, N]`), which is both faster and
//! what a transformer's projections look like. Transposes, `alpha` and the
//! bias/C term go to `sgemm`'s packing and epilogue: a term shaped like a
//! row (`[.., 1, N]`) is a column bias, one shaped like a column
//! (`[.., M, 1]`) a row bias, one shaped like the output block (`[.., M, N]`)
//! a residual, a single value is spread into a row. FusedMatMul's activation
//! runs in the epilogue too. Shapes the reference would reject (or that do
//! not match the preallocated output) return `Ok(false)`, so the reference
//! kernel reports the error.

use super::gemm::{gemm as gemm_product, pack_b, ASrc, BSrc, Epilogue, PackedB, PARALLEL_MIN_MACS};
use super::Prepacked;
use super::{sparse, CpuCtx, View, ViewMut};
use crate::ir::ops::util::broadcast_shape;
use crate::ir::{Activation, Op};
use crate::{Error, Result};

/// Fast path for MatMul, Gemm and FusedMatMul; `Ok(false)` for any other op
/// or for inputs it does not handle.
pub fn run(
    op: &Op,
    inputs: &[Option<View>],
    outputs: &mut [ViewMut],
    packed: Option<&Prepacked>,
    cx: &CpuCtx,
) -> Result<bool> {
    let [out] = outputs else { return Ok(false) };
    let packed_b = match packed {
        Some(Prepacked::B(p)) => Some(p),
        _ => None,
    };
    let sparse_b = match packed {
        Some(Prepacked::SparseB(w)) => Some(w),
        _ => None,
    };
    match op {
        Op::MatMul => {
            if inputs.len() != 2 {
                return Ok(false);
            }
            let op_name = op.onnx_type();
            let b = Bs {
                packed: packed_b,
                sparse: sparse_b,
            };
            matmul(op_name, inputs, b, false, false, 1.0, None, out, cx)
        }
        Op::FusedMatMul {
            trans_a,
            trans_b,
            alpha,
            act,
        } => {
            if inputs.len() > 3 {
                return Ok(false);
            }
            let op_name = op.onnx_type();
            let b = Bs {
                packed: packed_b,
                sparse: sparse_b,
            };
            matmul(
                op_name,
                inputs,
                b,
                *trans_a,
                *trans_b,
                *alpha,
                act.as_ref(),
                out,
                cx,
            )
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            if inputs.len() > 3 {
                return Ok(false);
            }
            let b = Bs {
                packed: packed_b,
                sparse: sparse_b,
            };
            gemm(inputs, b, *alpha, *beta, *trans_a, *trans_b, out, cx)
        }
        _ => Ok(false),
    }
}

/// Packs a constant 2-D B operand (see [`super::prepack`]).
pub fn prepack(op: &Op, inputs: &[Option<View>], cx: &CpuCtx) -> Option<Prepacked> {
    prepack_with(op, inputs, &[], None, cx)
}

/// B density up to which the sparse product is a candidate at all: denser
/// (unpruned) weights never list it, so their tuning is unchanged.
pub const SPARSE_MAX_DENSITY: f64 = 0.5;

/// B (work) density up to which the sparse product is the default from
/// [`SPARSE_MANY_ROWS`] rows on. `sparse_speed` on the Intel Xeon of
/// 2026-12-06 (AVX-512, 1 thread), 768x768 B against the dense GEMM at
/// 128 rows: 0.84x at density 0.3, 1.1-1.3x at 0.2, 1.7-1.9x at 0.1.
pub const SPARSE_DEFAULT_DENSITY: f64 = 0.2;

/// The same for products of fewer rows, where the sparse kernel fills
/// few lanes of each vector (but the dense one is bound by reading B): at
/// 1 row and 1 thread 0.6-0.8x at density 0.2, 1.3-1.4x at 0.1, 2.4-2.9x
/// at 0.05; but at 2 threads ResNet-18's 512x1000 classifier at density
/// 0.1 ran 1.74x slower sparse (`mlc tune`, same machine).
pub const SPARSE_DEFAULT_DENSITY_FEW_ROWS: f64 = 0.06;

/// Rows from which [`SPARSE_DEFAULT_DENSITY`] applies (a guess between
/// the 1 and 128 measured).
pub const SPARSE_MANY_ROWS: usize = 16;

/// Whether a B of (work) `density` runs sparse by default for a product
/// of `rows` rows (0: unknown, dense).
pub fn sparse_by_default(density: f64, rows: usize) -> bool {
    let limit = if rows >= SPARSE_MANY_ROWS {
        SPARSE_DEFAULT_DENSITY
    } else {
        SPARSE_DEFAULT_DENSITY_FEW_ROWS
    };
    rows > 0 && density <= limit
}

/// Rows of the product of `op` into an output of `out_shape` (all
/// batches; 0 when unknown), for [`sparse_by_default`].
pub fn product_rows(out_shape: &[usize]) -> usize {
    match out_shape.split_last() {
        Some((&n, rest)) if n > 0 => rest.iter().product(),
        _ => 0,
    }
}

/// [`prepack`] for the dense GEMM or (`sparse`, or by default a pruned B
/// for the rows of an output of `out_shape`, [`sparse_by_default`]) the
/// sparse product, which packs `alpha · op(B)ᵀ` as a sparse `[N][K]`.
pub fn prepack_with(
    op: &Op,
    inputs: &[Option<View>],
    out_shape: &[usize],
    sparse: Option<bool>,
    cx: &CpuCtx,
) -> Option<Prepacked> {
    let (trans_b, alpha) = match op {
        Op::MatMul => (false, 1.0),
        Op::FusedMatMul { trans_b, alpha, .. } | Op::Gemm { trans_b, alpha, .. } => {
            (*trans_b, *alpha)
        }
        _ => return None,
    };
    let b = arg(inputs, 1)?;
    let &[r, c] = b.shape else { return None };
    if r * c != b.data.len() || r == 0 || c == 0 {
        return None;
    }
    let (k, n) = if trans_b { (c, r) } else { (r, c) };
    let use_sparse = sparse.unwrap_or_else(|| {
        let density = super::weight_work_density(op, &b).unwrap_or(1.0);
        sparse_by_default(density, product_rows(out_shape))
    });
    if use_sparse {
        let wt: Vec<f32> = if trans_b {
            b.data.iter().map(|&v| alpha * v).collect()
        } else {
            let mut t = vec![0.0; n * k];
            for (kk, row) in b.data.chunks_exact(n).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    t[j * k + kk] = alpha * v;
                }
            }
            t
        };
        return Some(Prepacked::SparseB(sparse::prepack(&wt, n, k)));
    }
    let ldb = c;
    Some(Prepacked::B(pack_b(
        k,
        n,
        b.data,
        ldb,
        trans_b,
        cx.features,
    )))
}

/// A constant B's packs, if any: the dense GEMM's panels or the sparse
/// product's `alpha · op(B)ᵀ`.
#[derive(Clone, Copy, Default)]
struct Bs<'a> {
    packed: Option<&'a PackedB>,
    sparse: Option<&'a sparse::Csr>,
}

/// Rows of X per chunk of the sparse product (transposed into `[K][rows]`
/// scratch, the sparse kernel's pixels).
const SPARSE_CHUNK_ROWS: usize = 128;

thread_local! {
    /// The sparse product's transposed chunks of X and Y.
    static SPARSE_T: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `Y[rows][n] = act(X[rows][k] · Wᵀ + bias)` with `w` the sparse `[n][k]`
/// (alpha already folded in): per chunk of rows, `Yᵀ = W · Xᵀ` on
/// transposed copies, the rows in the vector lanes. Chunks go to the
/// threads when there are enough of them, else each chunk's product is
/// split.
#[allow(clippy::too_many_arguments)]
fn sparse_product(
    x: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    w: &sparse::Csr,
    bias: Option<&[f32]>,
    act: Option<&Activation>,
    y: &mut [f32],
    cx: &CpuCtx,
) {
    let chunk = |r0: usize, yc: &mut [f32], cx: &CpuCtx| {
        let len = yc.len() / n;
        SPARSE_T.with(|t| {
            let mut t = t.borrow_mut();
            let (xt, yt) = &mut *t;
            xt.resize(k * len, 0.0);
            yt.resize(n * len, 0.0);
            for (i, row) in x[r0 * k..(r0 + len) * k].chunks_exact(k).enumerate() {
                for (kk, &v) in row.iter().enumerate() {
                    xt[kk * len + i] = v;
                }
            }
            let ep = sparse::Epilogue {
                bias,
                residual: None,
                act,
            };
            sparse::spmm(
                w,
                &xt[..k * len],
                len,
                len,
                &mut yt[..n * len],
                len,
                &ep,
                cx,
            );
            for (i, row) in yc.chunks_exact_mut(n).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = yt[j * len + i];
                }
            }
        });
    };
    let y = &mut y[..rows * n];
    let chunks = rows.div_ceil(SPARSE_CHUNK_ROWS);
    if cx.threads > 1 && chunks >= 2 * cx.threads {
        let single = CpuCtx::single(cx.features);
        cx.for_each_chunk_mut(y, SPARSE_CHUNK_ROWS * n, |i, yc| {
            chunk(i * SPARSE_CHUNK_ROWS, yc, &single)
        });
    } else {
        for (i, yc) in y.chunks_mut(SPARSE_CHUNK_ROWS * n).enumerate() {
            chunk(i * SPARSE_CHUNK_ROWS, yc, cx);
        }
    }
}

/// B as the product's operand: the prepacked panels when they are this
/// (unbatched) B, else the raw matrix at batch offset `bo`.
#[allow(clippy::too_many_arguments)]
fn b_operand<'a>(
    packed: Option<&'a PackedB>,
    b: &'a [f32],
    bo: usize,
    blk: usize,
    ldb: usize,
    trans: bool,
    k: usize,
    n: usize,
) -> BSrc<'a> {
    match packed {
        Some(p) if bo == 0 && blk == b.len() && p.k() == k && p.n() == n => BSrc::Packed(p),
        _ => BSrc::Raw {
            b: &b[bo..bo + blk],
            ldb,
            trans,
        },
    }
}

/// Input `i` if present.
fn arg<'a>(inputs: &[Option<View<'a>>], i: usize) -> Option<View<'a>> {
    inputs.get(i).copied().flatten()
}

/// Checks that a view's data matches its shape (a runtime bug otherwise).
fn consistent(op: &'static str, what: &str, shape: &[usize], len: usize) -> Result<()> {
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(n) if n == len => Ok(()),
        _ => Err(Error::op(
            op,
            format!("internal: {what} view of shape {shape:?} holds {len} values"),
        )),
    }
}

/// Flat index, in a tensor with batch dims `inb` (right-aligned,
/// broadcasting onto `outb`), of the batch that output batch `bi` reads.
fn batch_index(bi: usize, outb: &[usize], inb: &[usize]) -> usize {
    let off = outb.len() - inb.len();
    let (mut rem, mut idx, mut stride) = (bi, 0, 1);
    for ax in (0..outb.len()).rev() {
        let i = rem % outb[ax];
        rem /= outb[ax];
        if ax >= off {
            let d = inb[ax - off];
            if d != 1 {
                idx += i * stride;
            }
            stride *= d;
        }
    }
    idx
}

/// How the bias (FusedMatMul) or C (Gemm) term enters the epilogue, per
/// output batch block of `m × n`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Term {
    /// A row of n (`[.., 1, N]`).
    Col,
    /// A column of m (`[.., M, 1]`).
    Row,
    /// A full `m × n` block.
    Full,
    /// One value.
    Scalar,
}

impl Term {
    /// The kind of a term whose block is `bm × bn` against `m × n` (None if
    /// it does not broadcast onto it).
    fn of(bm: usize, bn: usize, m: usize, n: usize) -> Option<Term> {
        match (bm == m, bn == n, bm == 1, bn == 1) {
            (true, true, _, _) => Some(Term::Full),
            (_, true, true, _) => Some(Term::Col),
            (true, _, _, true) => Some(Term::Row),
            (_, _, true, true) => Some(Term::Scalar),
            _ => None,
        }
    }

    fn block_len(self, m: usize, n: usize) -> usize {
        match self {
            Term::Col => n,
            Term::Row => m,
            Term::Full => m * n,
            Term::Scalar => 1,
        }
    }
}

/// `act(alpha · op(A) @ op(B) + bias)` with numpy matmul batching.
#[allow(clippy::too_many_arguments)]
fn matmul(
    op: &'static str,
    inputs: &[Option<View>],
    bs: Bs,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    act: Option<&Activation>,
    out: &mut ViewMut,
    cx: &CpuCtx,
) -> Result<bool> {
    let (Some(a), Some(b)) = (arg(inputs, 0), arg(inputs, 1)) else {
        return Ok(false);
    };
    let bias = arg(inputs, 2);
    consistent(op, "A", a.shape, a.data.len())?;
    consistent(op, "B", b.shape, b.data.len())?;
    consistent(op, "the output", out.shape, out.data.len())?;
    if let Some(t) = bias {
        consistent(op, "the bias", t.shape, t.data.len())?;
    }
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra == 0 || rb == 0 || (trans_a && ra < 2) || (trans_b && rb < 2) {
        return Ok(false);
    }
    let a_vec = ra == 1;
    let b_vec = rb == 1;
    // Stored matrix dims and op() dims.
    let (am, ak) = if a_vec {
        (1, a.shape[0])
    } else {
        (a.shape[ra - 2], a.shape[ra - 1])
    };
    let (bk, bn) = if b_vec {
        (b.shape[0], 1)
    } else {
        (b.shape[rb - 2], b.shape[rb - 1])
    };
    let (m, k) = if trans_a { (ak, am) } else { (am, ak) };
    let (k2, n) = if trans_b { (bn, bk) } else { (bk, bn) };
    if k != k2 {
        return Ok(false);
    }
    let a_batch = &a.shape[..ra.saturating_sub(2)];
    let b_batch = &b.shape[..rb.saturating_sub(2)];
    let Some(batch) = broadcast_shape(a_batch, b_batch) else {
        return Ok(false);
    };
    // The real output shape (unit dims of vectors dropped) must be the
    // preallocated one.
    let real_rank = batch.len() + usize::from(!a_vec) + usize::from(!b_vec);
    if out.shape.len() != real_rank
        || out.shape[..batch.len()] != batch[..]
        || (!a_vec && out.shape[batch.len()] != m)
        || (!b_vec && out.shape[real_rank - 1] != n)
    {
        return Ok(false);
    }
    let nbatch: usize = batch.iter().product();
    // The bias as (batch dims, block kind).
    let bias = match bias {
        None => None,
        Some(t) => {
            if t.shape.len() > real_rank {
                return Ok(false);
            }
            // Pad to the real output rank, then reinsert the dropped unit
            // dims to get [batch.., bm, bn].
            let mut s = vec![1usize; real_rank - t.shape.len()];
            s.extend_from_slice(t.shape);
            if s.iter()
                .zip(out.shape.iter())
                .any(|(&d, &o)| d != o && d != 1)
            {
                return Ok(false);
            }
            let tail = &s[batch.len()..];
            let (tm, tn) = match (a_vec, b_vec) {
                (true, true) => (1, 1),
                (true, false) => (1, tail[0]),
                (false, true) => (tail[0], 1),
                (false, false) => (tail[0], tail[1]),
            };
            let Some(kind) = Term::of(tm, tn, m, n) else {
                return Ok(false);
            };
            s.truncate(batch.len());
            Some((t.data, s, kind))
        }
    };
    if nbatch == 0 || m == 0 || n == 0 {
        return Ok(true);
    }
    let packed_b = bs.packed;
    // The sparse product: one B for all batches, A's rows stacked in
    // order, and a bias per output column (or none).
    if let Some(w) = bs
        .sparse
        .filter(|w| w.m() == n && w.k() == k && rb == 2 && !trans_a)
    {
        let mut spread = Vec::new();
        let col_bias = match &bias {
            None => Some(None),
            Some((d, bb, Term::Col)) if bb.iter().product::<usize>() == 1 => Some(Some(&d[..n])),
            Some((d, bb, Term::Scalar)) if bb.iter().product::<usize>() == 1 => {
                spread.resize(n, d[0]);
                Some(Some(&spread[..]))
            }
            _ => None,
        };
        if let Some(cb) = col_bias {
            sparse_product(a.data, m * nbatch, k, n, w, cb, act, out.data, cx);
            return Ok(true);
        }
    }
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    let (a_blk, b_blk, c_blk) = (m * k, k * n, m * n);

    // One tall product when the batches of A are contiguous rows sharing B.
    let a_nb: usize = a_batch.iter().product();
    let b_nb: usize = b_batch.iter().product();
    let bias_foldable = match &bias {
        None => true,
        Some((_, bb, kind)) => {
            let nb: usize = bb.iter().product();
            match kind {
                Term::Col | Term::Scalar => nb == 1,
                // Per-batch rows or blocks stack like the output only when
                // the bias has every batch.
                Term::Row | Term::Full => nb == nbatch,
            }
        }
    };
    if !trans_a && b_nb == 1 && a_nb == nbatch && nbatch > 1 && bias_foldable {
        let mut scalar_row = Vec::new();
        let ep = epilogue(&bias, 0, m * nbatch, n, act, &mut scalar_row);
        let a = ASrc::Raw {
            a: a.data,
            lda,
            trans: false,
        };
        let b = b_operand(packed_b, b.data, 0, b_blk, ldb, trans_b, k, n);
        gemm_product(m * nbatch, n, k, alpha, a, b, out.data, n, &ep, cx);
        return Ok(true);
    }

    // Output batch `bi` into `c` (one `m × n` block).
    let one = |bi: usize, c: &mut [f32], scalar_row: &mut Vec<f32>, cx: &CpuCtx| {
        let ao = batch_index(bi, &batch, a_batch) * a_blk;
        let bo = batch_index(bi, &batch, b_batch) * b_blk;
        let bias_bi = match &bias {
            Some((_, bb, _)) => batch_index(bi, &batch, bb),
            None => 0,
        };
        let ep = epilogue(&bias, bias_bi, m, n, act, scalar_row);
        let a = ASrc::Raw {
            a: &a.data[ao..ao + a_blk],
            lda,
            trans: trans_a,
        };
        let b = b_operand(packed_b, b.data, bo, b_blk, ldb, trans_b, k, n);
        gemm_product(m, n, k, alpha, a, b, c, n, &ep, cx);
    };
    let small = m * n * k < PARALLEL_MIN_MACS;
    if cx.threads > 1 && nbatch > 1 && small && m * n * k * nbatch >= PARALLEL_MIN_MACS {
        // Many small products (attention heads): one batch per task, each
        // single-threaded, so every element is still computed the same way.
        let single = CpuCtx::single(cx.features);
        cx.for_each_chunk_mut(out.data, c_blk, |bi, c| {
            one(bi, c, &mut Vec::new(), &single)
        });
    } else {
        let mut scalar_row = Vec::new();
        for (bi, c) in out.data.chunks_mut(c_blk).enumerate() {
            one(bi, c, &mut scalar_row, cx);
        }
    }
    Ok(true)
}

/// The epilogue for bias batch `bi` of an `m × n` product (a scalar bias is
/// spread into `scalar_row`).
fn epilogue<'a>(
    bias: &Option<(&'a [f32], Vec<usize>, Term)>,
    bi: usize,
    m: usize,
    n: usize,
    act: Option<&'a Activation>,
    scalar_row: &'a mut Vec<f32>,
) -> Epilogue<'a> {
    let mut ep = Epilogue {
        act,
        ..Default::default()
    };
    if let Some((data, _, kind)) = bias {
        let len = kind.block_len(m, n);
        let block = &data[bi * len..(bi + 1) * len];
        match kind {
            Term::Col => ep.bias_col = Some(block),
            Term::Row => ep.bias_row = Some(block),
            Term::Full => ep.residual = Some(block),
            Term::Scalar => {
                scalar_row.clear();
                scalar_row.resize(n, block[0]);
                ep.bias_col = Some(scalar_row);
            }
        }
    }
    ep
}

/// ONNX Gemm: `alpha · op(A) · op(B) + beta · C`, A and B 2-D, C
/// broadcasting onto `[M, N]`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    inputs: &[Option<View>],
    bs: Bs,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    out: &mut ViewMut,
    cx: &CpuCtx,
) -> Result<bool> {
    const OP: &str = "Gemm";
    let (Some(a), Some(b)) = (arg(inputs, 0), arg(inputs, 1)) else {
        return Ok(false);
    };
    consistent(OP, "A", a.shape, a.data.len())?;
    consistent(OP, "B", b.shape, b.data.len())?;
    consistent(OP, "the output", out.shape, out.data.len())?;
    if a.shape.len() != 2 || b.shape.len() != 2 {
        return Ok(false);
    }
    let (m, k) = if trans_a {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let (k2, n) = if trans_b {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    if k != k2 || out.shape != [m, n] {
        return Ok(false);
    }
    let mut scaled = Vec::new();
    let mut ep = Epilogue::default();
    if let Some(c) = arg(inputs, 2).filter(|_| beta != 0.0) {
        consistent(OP, "C", c.shape, c.data.len())?;
        if c.shape.len() > 2 {
            return Ok(false);
        }
        let mut s = vec![1usize; 2 - c.shape.len()];
        s.extend_from_slice(c.shape);
        let Some(kind) = Term::of(s[0], s[1], m, n) else {
            return Ok(false);
        };
        let term: &[f32] = if kind == Term::Scalar {
            scaled.push(c.data[0] * beta);
            scaled.resize(n, scaled[0]);
            &scaled
        } else if beta != 1.0 {
            scaled.extend(c.data.iter().map(|&v| v * beta));
            &scaled
        } else {
            c.data
        };
        match kind {
            Term::Col | Term::Scalar => ep.bias_col = Some(term),
            Term::Row => ep.bias_row = Some(term),
            Term::Full => ep.residual = Some(term),
        }
    }
    if m == 0 || n == 0 {
        return Ok(true);
    }
    // The sparse product (alpha folded into its pack): a C term of one
    // value per output column (or none).
    if let Some(w) = bs.sparse.filter(|w| w.m() == n && w.k() == k && !trans_a) {
        if ep.bias_row.is_none() && ep.residual.is_none() {
            sparse_product(a.data, m, k, n, w, ep.bias_col, None, out.data, cx);
            return Ok(true);
        }
    }
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    let a = ASrc::Raw {
        a: a.data,
        lda,
        trans: trans_a,
    };
    let b = b_operand(bs.packed, b.data, 0, b.data.len(), ldb, trans_b, k, n);
    gemm_product(m, n, k, alpha, a, b, out.data, n, &ep, cx);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::random;
    use crate::ir::Tensor;
    use crate::kernels::cpu::Features;

    fn ctxs() -> Vec<CpuCtx> {
        let mut two = CpuCtx::new(2).expect("a 2-thread pool starts");
        two.features = Features::detect();
        vec![
            CpuCtx::single(Features::portable()),
            CpuCtx::single(Features::detect()),
            two,
        ]
    }

    /// Runs the fast path into an output of `out_shape`; None if declined.
    fn fast(
        op: &Op,
        ins: &[Option<&Tensor>],
        out_shape: &[usize],
        cx: &CpuCtx,
    ) -> Option<Vec<f32>> {
        let vals: Vec<Option<(Vec<usize>, Vec<f32>)>> = ins
            .iter()
            .map(|t| t.map(|t| (t.shape().to_vec(), t.to_f32_vec())))
            .collect();
        let views: Vec<Option<View>> = vals
            .iter()
            .map(|v| v.as_ref().map(|(s, d)| View { shape: s, data: d }))
            .collect();
        let n: usize = out_shape.iter().product();
        let mut data = vec![f32::NAN; n];
        let mut outs = [ViewMut {
            shape: out_shape,
            data: &mut data,
        }];
        if !run(op, &views, &mut outs, None, cx).expect("no error") {
            return None;
        }
        // With B treated as a constant and prepacked: the same bits.
        let consts: Vec<Option<View>> = (0..views.len())
            .map(|i| if i == 1 { views[1] } else { None })
            .collect();
        if let Some(packed) = prepack(op, &consts, cx) {
            let mut again = vec![f32::NAN; n];
            let mut outs = [ViewMut {
                shape: out_shape,
                data: &mut again,
            }];
            assert!(run(op, &views, &mut outs, Some(&packed), cx).expect("no error"));
            assert!(
                again
                    .iter()
                    .zip(&data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{op:?}: prepacked B changed the result"
            );
        }
        Some(data)
    }

    /// The fast path agrees with the reference within rtol 1e-4.
    fn agree(op: &Op, ins: &[Option<&Tensor>]) {
        let want = crate::ir::ops::eval(op, ins, 1)
            .expect("reference runs")
            .remove(0);
        let w = want.to_f32_vec();
        let mut prev: Option<(Features, Vec<f32>)> = None;
        for cx in ctxs() {
            let got = fast(op, ins, want.shape(), &cx)
                .unwrap_or_else(|| panic!("{op:?} {:?}: fast path declined", shapes(ins)));
            // Same features, more threads: bit-identical.
            if let Some((f, p)) = &prev {
                if *f == cx.features {
                    assert!(
                        p.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{op:?} {:?}: thread count changed the result",
                        shapes(ins)
                    );
                }
            }
            prev = Some((cx.features, got.clone()));
            for (i, (g, w)) in got.iter().zip(&w).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{op:?} {:?} threads {} {:?} at {i}: {g} vs {w}",
                    shapes(ins),
                    cx.threads,
                    cx.features
                );
            }
        }
    }

    fn shapes(ins: &[Option<&Tensor>]) -> Vec<Option<Vec<usize>>> {
        ins.iter().map(|t| t.map(|t| t.shape().to_vec())).collect()
    }

    fn r(shape: &[usize], seed: u64) -> Tensor {
        random(shape, seed, 1.0)
    }

    #[test]
    fn matmul_matches_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 4], &[4, 5]),
            (&[7, 13], &[13, 97]),
            (&[2, 3, 4], &[4, 5]),
            (&[2, 3, 4], &[2, 4, 5]),
            (&[2, 1, 3, 4], &[3, 4, 5]),
            (&[1, 3, 4], &[2, 4, 5]),
            (&[4], &[4, 5]),
            (&[3, 4], &[4]),
            (&[4], &[4]),
            (&[5], &[2, 5, 3]),
            (&[2, 3, 5], &[5]),
            (&[0, 3, 4], &[4, 5]),
            (&[3, 0], &[0, 4]),
            (&[1, 1], &[1, 1]),
            (&[2, 33, 70], &[70, 40]),
            // Attention-like: many small products, split across threads.
            (&[12, 64, 32], &[12, 32, 64]),
            (&[2, 6, 64, 32], &[1, 6, 32, 64]),
            // Large enough to split one product across threads.
            (&[300, 70], &[70, 129]),
        ];
        for (i, (sa, sb)) in cases.iter().enumerate() {
            let (a, b) = (r(sa, 2 * i as u64), r(sb, 2 * i as u64 + 1));
            agree(&Op::MatMul, &[Some(&a), Some(&b)]);
        }
    }

    #[test]
    fn gemm_matches_reference() {
        let (m, n, k) = (7, 13, 5);
        let c_shapes: &[&[usize]] = &[&[n], &[1, n], &[m, 1], &[m, n], &[], &[1], &[1, 1]];
        let mut seed = 100;
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = r(&if ta { [k, m] } else { [m, k] }, seed);
            let b = r(&if tb { [n, k] } else { [k, n] }, seed + 1);
            seed += 2;
            for (alpha, beta) in [(1.0, 1.0), (0.5, -2.0), (1.5, 0.0)] {
                let op = Op::Gemm {
                    alpha,
                    beta,
                    trans_a: ta,
                    trans_b: tb,
                };
                agree(&op, &[Some(&a), Some(&b)]);
                for cs in c_shapes {
                    let c = r(cs, seed);
                    seed += 1;
                    agree(&op, &[Some(&a), Some(&b), Some(&c)]);
                }
            }
        }
    }

    #[test]
    fn fused_matmul_matches_reference() {
        let acts = [
            None,
            Some(Activation::Relu),
            Some(Activation::Gelu { tanh_approx: false }),
            Some(Activation::Clip {
                min: -0.2,
                max: 0.3,
            }),
        ];
        // (A op-shape, B op-shape, bias shapes)
        type Case<'a> = (&'a [usize], &'a [usize], &'a [&'a [usize]]);
        let cases: &[Case] = &[
            (
                &[5, 6],
                &[6, 7],
                &[&[7], &[1, 7], &[5, 7], &[5, 1], &[], &[1]],
            ),
            (
                &[3, 5, 6],
                &[6, 7],
                &[&[7], &[3, 5, 7], &[3, 1, 7], &[5, 7], &[3, 5, 1]],
            ),
            (
                &[2, 1, 5, 6],
                &[3, 6, 7],
                &[&[7], &[2, 3, 5, 7], &[3, 1, 1], &[2, 1, 1, 7]],
            ),
            (&[2, 17, 33], &[2, 33, 19], &[&[19], &[2, 17, 19]]),
            (
                &[12, 64, 32],
                &[12, 32, 64],
                &[&[64], &[12, 1, 64], &[12, 64, 64], &[64, 1]],
            ),
        ];
        let mut seed = 500;
        for (sa, sb, biases) in cases {
            for (ta, tb) in [(false, false), (true, true), (false, true), (true, false)] {
                let stored = |s: &[usize], t: bool| {
                    let mut s = s.to_vec();
                    let l = s.len();
                    if t {
                        s.swap(l - 2, l - 1);
                    }
                    s
                };
                let a = r(&stored(sa, ta), seed);
                let b = r(&stored(sb, tb), seed + 1);
                seed += 2;
                for (ai, act) in acts.iter().enumerate() {
                    let op = Op::FusedMatMul {
                        trans_a: ta,
                        trans_b: tb,
                        alpha: if ai % 2 == 0 { 1.0 } else { -0.7 },
                        act: act.clone(),
                    };
                    agree(&op, &[Some(&a), Some(&b)]);
                    for bs in biases.iter() {
                        let bias = r(bs, seed);
                        seed += 1;
                        agree(&op, &[Some(&a), Some(&b), Some(&bias)]);
                    }
                }
            }
        }
        // 1-D operands with a bias.
        let op = Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 2.0,
            act: Some(Activation::Relu),
        };
        let (v, m) = (r(&[6], 1), r(&[2, 6, 7], 2));
        agree(&op, &[Some(&v), Some(&m), Some(&r(&[7], 3))]);
        agree(&op, &[Some(&v), Some(&m), Some(&r(&[2, 7], 4))]);
        let w = r(&[2, 7, 6], 5);
        agree(&op, &[Some(&w), Some(&v), Some(&r(&[2, 7], 6))]);
        agree(&op, &[Some(&w), Some(&v), Some(&r(&[1], 7))]);
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let cx = CpuCtx::single(Features::detect());
        let (a, b) = (r(&[3, 4], 1), r(&[5, 6], 2));
        // Inner dims differ: the reference reports it.
        assert!(fast(&Op::MatMul, &[Some(&a), Some(&b)], &[3, 6], &cx).is_none());
        // Output buffer of the wrong shape.
        let b = r(&[4, 6], 3);
        assert!(fast(&Op::MatMul, &[Some(&a), Some(&b)], &[3, 5], &cx).is_none());
        // A bias that would grow the output.
        let fm = Op::FusedMatMul {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act: None,
        };
        let big = r(&[2, 3, 6], 4);
        assert!(fast(&fm, &[Some(&a), Some(&b), Some(&big)], &[3, 6], &cx).is_none());
        // A transposed vector.
        let fmt = Op::FusedMatMul {
            trans_a: true,
            trans_b: false,
            alpha: 1.0,
            act: None,
        };
        let v = r(&[4], 5);
        assert!(fast(&fmt, &[Some(&v), Some(&b)], &[6], &cx).is_none());
        // Not a linalg op.
        assert!(fast(
            &Op::Unary(crate::ir::UnaryOp::Relu),
            &[Some(&a)],
            &[3, 4],
            &cx
        )
        .is_none());
        // A view whose data does not match its shape is an internal error.
        let short = [0.0f32; 5];
        let views = [
            Some(View {
                shape: &[3, 4],
                data: &short,
            }),
            Some(View {
                shape: &[4, 6],
                data: &[0.0; 24],
            }),
        ];
        let mut out = vec![0.0f32; 18];
        let mut outs = [ViewMut {
            shape: &[3, 6],
            data: &mut out,
        }];
        assert!(run(&Op::MatMul, &views, &mut outs, None, &cx).is_err());
    }

    /// `t` with about `sparsity` of its values set to zero.
    fn pruned(t: Tensor, sparsity: f64, seed: u64) -> Tensor {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let v = t
            .to_f32_vec()
            .into_iter()
            .map(|v| if rng.next_f64() < sparsity { 0.0 } else { v })
            .collect();
        Tensor::from_f32(t.shape().to_vec(), v).unwrap()
    }

    /// The product with a constant B packed sparse (`sparse=1`) against
    /// the reference, on every context; the pack is the sparse one, and
    /// more threads give the same bits.
    fn sparse_agrees(op: &Op, ins: &[Option<&Tensor>]) {
        let want = crate::ir::ops::eval(op, ins, 1)
            .expect("reference runs")
            .remove(0);
        let views: Vec<Option<View>> = ins
            .iter()
            .map(|t| {
                t.map(|t| View {
                    shape: t.shape(),
                    data: t.as_f32().unwrap(),
                })
            })
            .collect();
        let consts: Vec<Option<View>> = (0..views.len())
            .map(|i| if i == 1 { views[1] } else { None })
            .collect();
        let mut prev: Option<(Features, Vec<f32>)> = None;
        for cx in ctxs() {
            let packed = prepack_with(op, &consts, want.shape(), Some(true), &cx).unwrap();
            assert!(matches!(packed, Prepacked::SparseB(_)));
            let mut got = vec![f32::NAN; want.numel()];
            let mut outs = [ViewMut {
                shape: want.shape(),
                data: &mut got,
            }];
            assert!(run(op, &views, &mut outs, Some(&packed), &cx).unwrap());
            if let Some((f, p)) = &prev {
                if *f == cx.features {
                    assert_eq!(p, &got, "{op:?}: thread count changed the result");
                }
            }
            for (i, (g, w)) in got.iter().zip(want.as_f32().unwrap()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{op:?} {:?} {:?} at {i}: {g} vs {w}",
                    shapes(ins),
                    cx.features
                );
            }
            prev = Some((cx.features, got));
        }
    }

    #[test]
    fn sparse_products_match_reference() {
        let mut seed = 500;
        for sparsity in [0.0, 0.5, 0.9, 1.0] {
            // MatMul: plain, batched A (stacked rows), a vector A, enough
            // rows for several chunks on the threads.
            for (ash, bsh) in [
                (&[7, 13][..], &[13, 20][..]),
                (&[2, 3, 40], &[40, 33]),
                (&[40], &[40, 9]),
                (&[1100, 24], &[24, 17]),
            ] {
                seed += 3;
                let a = r(ash, seed);
                let b = pruned(r(bsh, seed + 1), sparsity, seed + 2);
                sparse_agrees(&Op::MatMul, &[Some(&a), Some(&b)]);
            }
            // Gemm, B transposed or not, C of every kind (a row or a full
            // block of C falls back to the dense product), alpha and beta.
            let (m, k, n) = (19, 30, 21);
            for tb in [false, true] {
                for cs in [
                    None,
                    Some(&[n][..]),
                    Some(&[1, 1]),
                    Some(&[m, 1]),
                    Some(&[m, n]),
                ] {
                    seed += 3;
                    let a = r(&[m, k], seed);
                    let b = pruned(
                        r(&if tb { [n, k] } else { [k, n] }, seed + 1),
                        sparsity,
                        seed,
                    );
                    let c = cs.map(|s| r(s, seed + 2));
                    let op = Op::Gemm {
                        alpha: 0.5,
                        beta: -2.0,
                        trans_a: false,
                        trans_b: tb,
                    };
                    sparse_agrees(&op, &[Some(&a), Some(&b), c.as_ref()]);
                }
            }
            // FusedMatMul: alpha, bias, activations fused and late, a
            // transposed A (the dense fallback).
            for (i, act) in [
                None,
                Some(Activation::Relu),
                Some(Activation::Gelu { tanh_approx: false }),
            ]
            .into_iter()
            .enumerate()
            {
                for ta in [false, true] {
                    seed += 3;
                    let a = r(&if ta { [2, 30, 16] } else { [2, 16, 30] }, seed);
                    let b = pruned(r(&[30, 12], seed + 1), sparsity, seed);
                    let bias = r(&[12], seed + 2);
                    let op = Op::FusedMatMul {
                        trans_a: ta,
                        trans_b: false,
                        alpha: if i == 1 { 1.0 } else { -0.7 },
                        act: act.clone(),
                    };
                    sparse_agrees(&op, &[Some(&a), Some(&b), Some(&bias)]);
                }
            }
        }
        // The default: pruned B, more so for few rows.
        assert!(sparse_by_default(0.2, 128));
        assert!(!sparse_by_default(0.1, 1));
        assert!(sparse_by_default(0.05, 1));
        assert!(!sparse_by_default(0.05, 0));
        assert!(!sparse_by_default(0.3, 128));
    }
}
