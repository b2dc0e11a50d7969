//! f32 GEMM: `C = alpha * op(A) * op(B)` followed by a fused epilogue.
//!
//! (The packed, cache-blocked implementation with the AVX2/FMA micro-kernel
//! is being written; this naive version fixes the interface.)

use super::CpuCtx;
use crate::ir::Activation;

/// What happens to each element of C after the product, in this order:
/// bias by column, bias by row, residual, activation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every row (length n): a MatMul/Gemm bias.
    pub bias_col: Option<&'a [f32]>,
    /// Added to every column (length m): a Conv bias when rows are channels.
    pub bias_row: Option<&'a [f32]>,
    /// Added elementwise, laid out like C (same ldc).
    pub residual: Option<&'a [f32]>,
    pub act: Option<&'a Activation>,
}

/// `C[m×n] = alpha · op(A)[m×k] · op(B)[k×n]`, then the epilogue; C is
/// overwritten. Row-major with leading dimensions `lda`, `ldb`, `ldc`;
/// `op(A)` is A transposed when `trans_a` (then A is stored k×m).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    c: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
    _cx: &CpuCtx,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                let av = if trans_a {
                    a[p * lda + i]
                } else {
                    a[i * lda + p]
                };
                let bv = if trans_b {
                    b[j * ldb + p]
                } else {
                    b[p * ldb + j]
                };
                acc += av * bv;
            }
            let mut v = alpha * acc;
            if let Some(bc) = ep.bias_col {
                v += bc[j];
            }
            if let Some(br) = ep.bias_row {
                v += br[i];
            }
            if let Some(r) = ep.residual {
                v += r[i * ldc + j];
            }
            c[i * ldc + j] = v;
        }
        if let Some(act) = ep.act {
            super::apply_activation(act, &mut c[i * ldc..i * ldc + n]);
        }
    }
}
