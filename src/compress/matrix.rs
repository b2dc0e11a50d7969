//! A layer's weight seen as a matrix of output rows by reduction columns,
//! wherever they sit in its tensor: what pruning ranks and zeroes, the
//! least-squares update re-fits and low-rank factorization splits.

use crate::ir::Op;

/// A layer's weight as a matrix: `rows` outputs by `cols` reduction
/// elements, wherever they sit in the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightMatrix {
    pub rows: usize,
    pub cols: usize,
    row_stride: usize,
    col_stride: usize,
    /// Reduction columns per input channel (a convolution's taps).
    taps: usize,
    /// Output rows per group, and input channels per group.
    rows_per_group: usize,
    channels_per_group: usize,
}

impl WeightMatrix {
    /// The matrix of `op`'s weight of shape `w_shape`: a convolution's
    /// `[M, C/G, kh, kw]`, a MatMul's `[K, N]`, a transposed one's `[N, K]`.
    pub fn of(op: &Op, w_shape: &[usize]) -> Option<WeightMatrix> {
        let transposed = |rows: usize, cols: usize| WeightMatrix {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
            taps: 1,
            rows_per_group: rows,
            channels_per_group: cols,
        };
        match op {
            Op::Conv(a) | Op::FusedConv { conv: a, .. } | Op::QConv { conv: a, .. } => {
                let m = *w_shape.first()?;
                let cg = *w_shape.get(1)?;
                let taps: usize = w_shape.get(2..)?.iter().product();
                if a.group == 0 || m % a.group != 0 {
                    return None;
                }
                Some(WeightMatrix {
                    rows: m,
                    cols: cg * taps,
                    row_stride: cg * taps,
                    col_stride: 1,
                    taps,
                    rows_per_group: m / a.group,
                    channels_per_group: cg,
                })
            }
            Op::Gemm { trans_b: true, .. } | Op::FusedMatMul { trans_b: true, .. } => {
                let [n, k] = *w_shape else { return None };
                Some(transposed(n, k))
            }
            Op::MatMul | Op::Gemm { .. } | Op::FusedMatMul { .. } | Op::QMatMul { .. } => {
                let [k, n] = *w_shape else { return None };
                Some(WeightMatrix {
                    rows: n,
                    cols: k,
                    row_stride: 1,
                    col_stride: n,
                    taps: 1,
                    rows_per_group: n,
                    channels_per_group: k,
                })
            }
            _ => None,
        }
    }

    /// Flat index of row `r`, column `c` in the weight tensor.
    pub fn index(&self, r: usize, c: usize) -> usize {
        r * self.row_stride + c * self.col_stride
    }

    /// The input channel that column `c` of row `r` multiplies.
    pub fn input_channel(&self, r: usize, c: usize) -> usize {
        (r / self.rows_per_group) * self.channels_per_group + c / self.taps
    }

    /// Units (runs of `unit_rows` rows at one column), row run major.
    pub fn units(&self, unit_rows: usize) -> usize {
        self.rows.div_ceil(unit_rows) * self.cols
    }

    /// The weights' flat indices of unit `u` (of `unit_rows` rows).
    pub fn unit_elements(&self, unit_rows: usize, u: usize) -> impl Iterator<Item = usize> + '_ {
        let (rb, c) = (u / self.cols, u % self.cols);
        let rows = rb * unit_rows..((rb + 1) * unit_rows).min(self.rows);
        rows.map(move |r| self.index(r, c))
    }

    /// One input channel per group and several groups: a depthwise
    /// convolution.
    pub fn is_depthwise(&self) -> bool {
        self.channels_per_group == 1 && self.rows_per_group < self.rows
    }
}
