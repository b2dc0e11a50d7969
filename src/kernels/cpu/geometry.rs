//! The geometry of a 2-D sliding window ([`Window2d`]), beneath the kernels
//! that share it: convolution ([`super::conv`]), pooling ([`super::ops`]),
//! Winograd ([`super::winograd`]) and the stride-phase scratch layout
//! ([`super::lanes`]).

use crate::ir::ops::nn::conv::Axis;

/// Geometry of one 2-D sliding window over an `[H, W]` plane (a 1-D window
/// has `h == kh == oh == 1`). Shared with pooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Window2d {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub pad_bottom: usize,
    pub pad_right: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Window2d {
    /// From the per-axis geometry of one or two spatial axes.
    pub fn from_axes(axes: &[Axis]) -> Option<Window2d> {
        let unit = Axis {
            input: 1,
            kernel: 1,
            stride: 1,
            dilation: 1,
            pad_begin: 0,
            pad_end: 0,
            output: 1,
        };
        let (a, b) = match axes {
            [b] => (unit, *b),
            [a, b] => (*a, *b),
            _ => return None,
        };
        Some(Window2d {
            h: a.input,
            w: b.input,
            kh: a.kernel,
            kw: b.kernel,
            sh: a.stride,
            sw: b.stride,
            dh: a.dilation,
            dw: b.dilation,
            pad_top: a.pad_begin,
            pad_left: b.pad_begin,
            pad_bottom: a.pad_end,
            pad_right: b.pad_end,
            oh: a.output,
            ow: b.output,
        })
    }

    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1 window with stride 1 and no padding: output = input pixels.
    pub fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.oh == self.h
            && self.ow == self.w
    }

    /// Rows and columns of the zero-padded plane that holds the input and
    /// everything any output reads.
    pub fn padded_extent(&self) -> (usize, usize) {
        let extent = |o: usize, s: usize, k: usize, d: usize, pad: usize, n: usize| {
            (pad + n).max((o - 1) * s + (k - 1) * d + 1)
        };
        (
            extent(self.oh, self.sh, self.kh, self.dh, self.pad_top, self.h),
            extent(self.ow, self.sw, self.kw, self.dw, self.pad_left, self.w),
        )
    }

    /// Whether the zero-padded plane ([`Window2d::padded_extent`]) is of
    /// a size the fast kernels may copy the input into: about the input
    /// and output planes for real models; only pads or strides far larger
    /// than the window (a hostile model: pads of 10^5 with a stride as
    /// large give a 3x3 output but a padded plane of terabytes) go past it.
    pub fn padding_fits(&self) -> bool {
        let (hp, wp) = self.padded_extent();
        let budget = (self.in_plane() + self.out_plane())
            .saturating_mul(2)
            .saturating_add(4096);
        hp.checked_mul(wp).is_some_and(|p| p <= budget)
    }

    /// A 3x3 undilated window at stride 2 with leading pads of at most 1
    /// (PyTorch's padding 1, TensorFlow's SAME): output column `o` reads
    /// input columns `2o - pad_left + 0..3`, row `oh` rows `2oh - pad_top
    /// + 0..3`. The trailing pads only decide the output size.
    pub fn halved_3x3(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw) == (3, 3, 2, 2, 1, 1)
            && self.pad_top <= 1
            && self.pad_left <= 1
    }

    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// The input row that kernel row `ki` of output row `oh` reads, or
    /// `None` when it is padding.
    #[inline]
    pub fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        (oh * self.sh + ki * self.dh)
            .checked_sub(self.pad_top)
            .filter(|&r| r < self.h)
    }

    /// Output columns `lo..hi` whose kernel column `kj` reads inside the
    /// input; column `ow` reads input column `ow * sw + kj * dw - pad_left`,
    /// and the first of them (for `ow = lo`) is returned as well.
    #[inline]
    pub fn col_range(&self, kj: usize) -> (usize, usize, usize) {
        let off = kj * self.dw;
        // ow * sw + off >= pad_left
        let lo = if off >= self.pad_left {
            0
        } else {
            (self.pad_left - off).div_ceil(self.sw)
        };
        // ow * sw + off - pad_left <= w - 1
        let hi = if self.w + self.pad_left > off {
            ((self.w + self.pad_left - off - 1) / self.sw + 1).min(self.ow)
        } else {
            0
        };
        if lo >= hi {
            return (0, 0, 0);
        }
        (lo, hi, lo * self.sw + off - self.pad_left)
    }

    /// Kernel rows `ki` of output row `oh` that lie inside the padded input
    /// (`< h + pad_bottom`: what an average with padding counts), and of
    /// those, the ones inside the input.
    pub fn row_counts(&self, oh: usize) -> (usize, usize) {
        count_taps(
            oh,
            self.sh,
            self.dh,
            self.kh,
            self.pad_top,
            self.h,
            self.pad_bottom,
        )
    }

    /// Like [`Window2d::row_counts`] for output column `ow`.
    pub fn col_counts(&self, ow: usize) -> (usize, usize) {
        count_taps(
            ow,
            self.sw,
            self.dw,
            self.kw,
            self.pad_left,
            self.w,
            self.pad_right,
        )
    }
}

// Used by the AVX-512 kernels' tests.
#[cfg(all(test, target_arch = "x86_64"))]
impl Window2d {
    /// A 3x3 stride-2 window over `h x w` with pads (top, left, bottom,
    /// right); `None` when it has no output.
    pub fn halved_3x3_over(
        h: usize,
        w: usize,
        (t, l, b, r): (usize, usize, usize, usize),
    ) -> Option<Window2d> {
        let out = |n: usize, p: usize| (n + p).checked_sub(3).map(|x| x / 2 + 1);
        Some(Window2d {
            h,
            w,
            kh: 3,
            kw: 3,
            sh: 2,
            sw: 2,
            dh: 1,
            dw: 1,
            pad_top: t,
            pad_left: l,
            pad_bottom: b,
            pad_right: r,
            oh: out(h, t + b)?,
            ow: out(w, l + r)?,
        })
    }
}

/// (taps inside the padded input, taps inside the input) of output `o` on
/// one axis.
fn count_taps(
    o: usize,
    s: usize,
    d: usize,
    k: usize,
    pb: usize,
    n: usize,
    pe: usize,
) -> (usize, usize) {
    let (mut padded, mut inside) = (0, 0);
    for ki in 0..k {
        let p = o * s + ki * d; // position in padded coordinates
        if p < n + pb + pe {
            padded += 1;
            if p >= pb && p - pb < n {
                inside += 1;
            }
        }
    }
    (padded, inside)
}
