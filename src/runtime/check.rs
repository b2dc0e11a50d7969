//! Compares the runtime's outputs with the reference interpreter's, the
//! oracle (`mlc bench --verify`).

use serde::Serialize;

use crate::ir::Tensor;

/// How one output agrees with the reference: `|got - want| <= atol + rtol *
/// |want|` elementwise.
#[derive(Clone, Debug, Serialize)]
pub struct OutputCheck {
    pub name: String,
    pub elements: usize,
    /// Elements outside the tolerance (a NaN on one side only counts).
    pub outside: usize,
    pub max_abs_err: f64,
    /// The largest `|got - want| / (atol + rtol * |want|)`: at most 1 when
    /// every element is within the tolerance.
    pub worst_tolerance_share: f64,
    /// A shape or dtype mismatch, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

impl OutputCheck {
    pub fn ok(&self) -> bool {
        self.mismatch.is_none() && self.outside == 0
    }
}

/// Checks each of `got` against the same-position tensor of `want`.
pub fn compare(
    names: &[String],
    got: &[Tensor],
    want: &[Tensor],
    rtol: f64,
    atol: f64,
) -> Vec<OutputCheck> {
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (g, w))| {
            let name = names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
            let mut c = OutputCheck {
                name,
                elements: w.numel(),
                outside: 0,
                max_abs_err: 0.0,
                worst_tolerance_share: 0.0,
                mismatch: None,
            };
            if g.shape() != w.shape() || g.dtype() != w.dtype() {
                c.mismatch = Some(format!(
                    "{}{:?} vs the reference's {}{:?}",
                    g.dtype(),
                    g.shape(),
                    w.dtype(),
                    w.shape()
                ));
                return c;
            }
            for (p, q) in g.to_f64_vec().into_iter().zip(w.to_f64_vec()) {
                if p == q || (p.is_nan() && q.is_nan()) {
                    continue;
                }
                let err = (p - q).abs();
                let share = err / (atol + rtol * q.abs());
                // A NaN share (NaN on one side) counts as outside.
                if share > 1.0 || share.is_nan() {
                    c.outside += 1;
                }
                c.max_abs_err = c.max_abs_err.max(err);
                c.worst_tolerance_share = if share.is_nan() {
                    f64::INFINITY
                } else {
                    c.worst_tolerance_share.max(share)
                };
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_outside_the_tolerance() {
        let t = |v: Vec<f32>| Tensor::from_f32(vec![v.len()], v).unwrap();
        let names = ["y".to_string()];
        let want = [t(vec![1.0, 100.0, 0.0, f32::NAN])];
        let close = [t(vec![1.0005, 100.05, 5e-6, f32::NAN])];
        let c = &compare(&names, &close, &want, 1e-3, 1e-5)[0];
        assert!(c.ok(), "{c:?}");
        assert!((c.max_abs_err - 0.05).abs() < 1e-4);
        let far = [t(vec![1.01, 100.0, f32::NAN, 0.0])];
        let c = &compare(&names, &far, &want, 1e-3, 1e-5)[0];
        assert_eq!(c.outside, 3, "{c:?}");
        assert!(!c.ok());
        let shape = [Tensor::from_f32(vec![2, 2], vec![0.0; 4]).unwrap()];
        assert!(compare(&names, &shape, &want, 1e-3, 1e-5)[0]
            .mismatch
            .is_some());
    }
}
