//! Reference BatchNormalization, LayerNormalization and
//! InstanceNormalization.
//!
//! All three compute `scale * (x - mean) / sqrt(var + epsilon) + bias`; they
//! differ in where the statistics come from. BatchNormalization reads them
//! from its inputs, one per channel (axis 1), or in training mode computes
//! them per channel over the batch and spatial dims (population variance)
//! and also returns the running statistics `input * momentum + batch * (1 -
//! momentum)`. LayerNormalization computes them
//! over the trailing dims `axis..rank` of every leading index, and its scale
//! and bias broadcast (numpy rules) onto X. InstanceNormalization computes
//! them over the spatial dims of every (batch, channel) pair, with per-channel
//! scale and bias. Values are widened to f64 (two-pass mean then variance)
//! and rounded once to X's floating point type.

use half::f16;

use crate::ir::ops::util::{
    broadcast_index_map, broadcast_shape, input, normalize_axis, not_held, opt_input,
};
use crate::ir::{DType, Op, Tensor, TensorData};
use crate::{Error, Result};

/// Evaluates BatchNormalization, LayerNormalization or
/// InstanceNormalization. Returns `Y`; LayerNormalization also returns its
/// optional `Mean` and `InvStdDev` outputs (f32, the default `stash_type`)
/// and training-mode BatchNormalization its `running_mean` and
/// `running_var`, which the interpreter drops when the node does not
/// declare them.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let y = match op {
        Op::BatchNormalization {
            epsilon,
            training_momentum,
        } => return batch_norm(*epsilon as f64, training_momentum.map(f64::from), inputs),
        Op::LayerNormalization { axis, epsilon } => {
            return layer_norm(*axis, *epsilon as f64, inputs)
        }
        Op::InstanceNormalization { epsilon } => instance_norm(*epsilon as f64, inputs)?,
        &Op::Lrn {
            alpha,
            beta,
            bias,
            size,
        } => lrn(alpha as f64, beta as f64, bias as f64, size, inputs)?,
        other => return Err(Error::Internal(not_held("norm", other))),
    };
    Ok(vec![y])
}

/// Floating point values of `t` as f64.
fn floats(op: &'static str, what: &str, t: &Tensor) -> Result<Vec<f64>> {
    if !t.dtype().is_float() {
        return Err(Error::op(
            op,
            format!(
                "{what} must be a floating point tensor (f16, f32, f64), got {}",
                t.dtype()
            ),
        ));
    }
    Ok(t.to_f64_vec())
}

/// A per-channel parameter: floating point with exactly `c` elements.
fn per_channel(op: &'static str, what: &str, t: &Tensor, c: usize) -> Result<Vec<f64>> {
    let v = floats(op, what, t)?;
    if v.len() != c || t.rank() > 1 {
        return Err(Error::op(
            op,
            format!(
                "{what} must be 1-D with one value per channel ({c}), got shape {:?}",
                t.shape()
            ),
        ));
    }
    Ok(v)
}

/// Builds a tensor of X's float dtype from f64 results.
fn finish(op: &'static str, dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor> {
    let data = match dtype {
        DType::F64 => TensorData::F64(v),
        DType::F16 => TensorData::F16(v.into_iter().map(f16::from_f64).collect()),
        DType::BF16 => TensorData::from_f64(DType::BF16, &v),
        _ => TensorData::F32(v.into_iter().map(|x| x as f32).collect()),
    };
    Tensor::new(shape, data)
        .map_err(|e| Error::op(op, format!("internal: output does not fit its shape: {e}")))
}

/// Local response normalization: each element divided by `(bias + alpha /
/// size * Σ x²)^beta`, the sum over the `size` channels around its own
/// (`floor((size - 1) / 2)` before, `ceil((size - 1) / 2)` after, clipped to
/// the channels there are).
fn lrn(
    alpha: f64,
    beta: f64,
    bias: f64,
    size: usize,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor> {
    const OP: &str = "LRN";
    let x = input(OP, inputs, 0)?;
    let v = floats(OP, "X", x)?;
    let sh = x.shape();
    if sh.len() < 3 {
        return Err(Error::op(
            OP,
            format!("X must be [N, C, D1, ..], got shape {sh:?}"),
        ));
    }
    let (n, c) = (sh[0], sh[1]);
    let plane: usize = sh[2..].iter().product();
    let (before, after) = ((size - 1) / 2, size / 2);
    let mut y = vec![0.0; v.len()];
    for b in 0..n {
        for ch in 0..c {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c - 1);
            for p in 0..plane {
                let at = |k: usize| (b * c + k) * plane + p;
                let sq: f64 = (lo..=hi).map(|k| v[at(k)] * v[at(k)]).sum();
                y[at(ch)] = v[at(ch)] / (bias + alpha / size as f64 * sq).powf(beta);
            }
        }
    }
    finish(OP, x.dtype(), sh.to_vec(), y)
}

/// Mean and population variance (two passes) of a slice.
fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var)
}

fn batch_norm(
    eps: f64,
    training_momentum: Option<f64>,
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>> {
    const OP: &str = "BatchNormalization";
    let x = input(OP, inputs, 0)?;
    if x.rank() < 2 {
        return Err(Error::op(
            OP,
            format!(
                "X must have rank >= 2 (N, C, ...), got shape {:?}",
                x.shape()
            ),
        ));
    }
    let xv = floats(OP, "X", x)?;
    let c = x.shape()[1];
    let scale = per_channel(OP, "scale", input(OP, inputs, 1)?, c)?;
    let bias = per_channel(OP, "B", input(OP, inputs, 2)?, c)?;
    let mean_t = input(OP, inputs, 3)?;
    let in_mean = per_channel(OP, "input_mean", mean_t, c)?;
    let in_var = per_channel(OP, "input_var", input(OP, inputs, 4)?, c)?;
    let inner: usize = x.shape()[2..].iter().product();
    // The statistics Y normalizes with: the inputs, or in training mode the
    // batch's per-channel mean and population variance.
    let (mean, var) = match training_momentum {
        None => (in_mean.clone(), in_var.clone()),
        Some(_) => {
            let mut per_ch: Vec<Vec<f64>> = vec![Vec::new(); c];
            if inner > 0 {
                for (plane, vals) in xv.chunks(inner).enumerate() {
                    per_ch[plane % c].extend_from_slice(vals);
                }
            }
            // An empty channel has NaN statistics, as in numpy.
            per_ch.iter().map(|v| moments(v)).unzip()
        }
    };
    let y: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            // inner == 0 means X is empty and this closure never runs.
            let ch = (i / inner) % c;
            scale[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + bias[ch]
        })
        .collect();
    let y = finish(OP, x.dtype(), x.shape().to_vec(), y)?;
    let Some(m) = training_momentum else {
        return Ok(vec![y]);
    };
    let blend = |input: &[f64], batch: &[f64]| -> Vec<f64> {
        input
            .iter()
            .zip(batch)
            .map(|(&i, &b)| i * m + b * (1.0 - m))
            .collect()
    };
    let running_mean = blend(&in_mean, &mean);
    let running_var = blend(&in_var, &var);
    Ok(vec![
        y,
        finish(OP, mean_t.dtype(), vec![c], running_mean)?,
        finish(OP, mean_t.dtype(), vec![c], running_var)?,
    ])
}

/// Values of an affine parameter broadcast onto X's shape (one per element
/// of X, row-major).
fn broadcast_param(
    op: &'static str,
    what: &str,
    p: &Tensor,
    x_shape: &[usize],
) -> Result<Vec<f64>> {
    let v = floats(op, what, p)?;
    if broadcast_shape(p.shape(), x_shape).as_deref() != Some(x_shape) {
        return Err(Error::op(
            op,
            format!(
                "{what} of shape {:?} does not broadcast to X's shape {x_shape:?}",
                p.shape()
            ),
        ));
    }
    Ok(broadcast_index_map(p.shape(), x_shape)
        .into_iter()
        .map(|i| v[i])
        .collect())
}

/// LayerNormalization: `[Y, Mean, InvStdDev]`, the statistics shaped
/// `X.shape[..axis]` followed by ones.
fn layer_norm(axis: i64, eps: f64, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    const OP: &str = "LayerNormalization";
    let x = input(OP, inputs, 0)?;
    let xv = floats(OP, "X", x)?;
    let xs = x.shape();
    let axis = normalize_axis(OP, axis, x.rank())?;
    let scale = broadcast_param(OP, "Scale", input(OP, inputs, 1)?, xs)?;
    let bias = match opt_input(inputs, 2) {
        Some(b) => Some(broadcast_param(OP, "B", b, xs)?),
        None => None,
    };
    let rows: usize = xs[..axis].iter().product();
    let cols: usize = xs[axis..].iter().product();
    let mut y = vec![0.0; xv.len()];
    let mut means = vec![0.0; rows];
    let mut inv_stds = vec![0.0; rows];
    if cols > 0 {
        for (r, row) in xv.chunks(cols).enumerate() {
            let (mean, var) = moments(row);
            let inv = 1.0 / (var + eps).sqrt();
            means[r] = mean;
            inv_stds[r] = inv;
            for (j, &v) in row.iter().enumerate() {
                let i = r * cols + j;
                let b = bias.as_ref().map_or(0.0, |b| b[i]);
                y[i] = (v - mean) * inv * scale[i] + b;
            }
        }
    } else {
        // Empty rows: the statistics of nothing are NaN, as in numpy.
        means.fill(f64::NAN);
        inv_stds.fill(f64::NAN);
    }
    let mut stat_shape = xs[..axis].to_vec();
    stat_shape.resize(xs.len(), 1);
    Ok(vec![
        finish(OP, x.dtype(), xs.to_vec(), y)?,
        finish(OP, DType::F32, stat_shape.clone(), means)?,
        finish(OP, DType::F32, stat_shape, inv_stds)?,
    ])
}

fn instance_norm(eps: f64, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    const OP: &str = "InstanceNormalization";
    let x = input(OP, inputs, 0)?;
    if x.rank() < 2 {
        return Err(Error::op(
            OP,
            format!(
                "X must have rank >= 2 (N, C, spatial...), got shape {:?}",
                x.shape()
            ),
        ));
    }
    let xv = floats(OP, "X", x)?;
    let c = x.shape()[1];
    let scale = per_channel(OP, "scale", input(OP, inputs, 1)?, c)?;
    let bias = per_channel(OP, "B", input(OP, inputs, 2)?, c)?;
    let inner: usize = x.shape()[2..].iter().product();
    let mut y = vec![0.0; xv.len()];
    if inner > 0 {
        for (plane, vals) in xv.chunks(inner).enumerate() {
            let ch = plane % c;
            let (mean, var) = moments(vals);
            let inv = 1.0 / (var + eps).sqrt();
            for (j, &v) in vals.iter().enumerate() {
                y[plane * inner + j] = scale[ch] * (v - mean) * inv + bias[ch];
            }
        }
    }
    finish(OP, x.dtype(), x.shape().to_vec(), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::util::testing::{self, seq, t};

    fn run(op: &Op, ins: &[Option<&Tensor>]) -> Result<Tensor> {
        eval(op, ins).map(|mut v| v.remove(0))
    }

    fn assert_close(got: &Tensor, shape: &[usize], want: &[f32]) {
        testing::assert_close(got, shape, want, 1e-5);
    }

    #[test]
    fn batch_norm_rank4_and_rank2() {
        // onnx test_batchnorm_example.
        let x = t(&[1, 2, 1, 3], vec![-1., 0., 1., 2., 3., 4.]);
        let s = t(&[2], vec![1.0, 1.5]);
        let b = t(&[2], vec![0., 1.]);
        let mean = t(&[2], vec![0., 3.]);
        let var = t(&[2], vec![1., 1.5]);
        let op = Op::BatchNormalization {
            epsilon: 1e-5,
            training_momentum: None,
        };
        let y = run(
            &op,
            &[Some(&x), Some(&s), Some(&b), Some(&mean), Some(&var)],
        )
        .unwrap();
        assert_close(
            &y,
            &[1, 2, 1, 3],
            &[-0.999995, 0., 0.999995, -0.22474074, 1., 2.2247407],
        );
        // Rank 2 [N, C], batch 2.
        let x = t(&[2, 2], vec![1., 4., 3., 6.]);
        let y = run(
            &op,
            &[Some(&x), Some(&s), Some(&b), Some(&mean), Some(&var)],
        )
        .unwrap();
        assert_close(&y, &[2, 2], &[0.999995, 2.2247407, 2.999985, 4.674222]);
        // Wrong parameter size and rank-1 X.
        let bad = t(&[3], vec![1.; 3]);
        assert!(run(
            &op,
            &[Some(&x), Some(&bad), Some(&b), Some(&mean), Some(&var)]
        )
        .is_err());
        let x1 = t(&[2], vec![1., 2.]);
        assert!(run(
            &op,
            &[Some(&x1), Some(&s), Some(&b), Some(&mean), Some(&var)]
        )
        .is_err());
        assert!(run(&op, &[Some(&x), Some(&s), Some(&b), Some(&mean)]).is_err());
    }

    #[test]
    fn batch_norm_training_mode() {
        // onnx.reference _batchnorm_training_mode, momentum 0.8, epsilon
        // 1e-2, x = arange(12).reshape(2, 3, 2) ** 1.5.
        let x = t(&[2, 3, 2], (0..12).map(|i| (i as f32).powf(1.5)).collect());
        let s = t(&[3], vec![1.0, 1.5, 2.0]);
        let b = t(&[3], vec![0., 1., -1.]);
        let mean = t(&[3], vec![0.5, 1., 2.]);
        let var = t(&[3], vec![1., 2., 3.]);
        let op = Op::BatchNormalization {
            epsilon: 1e-2,
            training_momentum: Some(0.8),
        };
        let ins = [Some(&x), Some(&s), Some(&b), Some(&mean), Some(&var)];
        let outs = eval(&op, &ins).unwrap();
        assert_eq!(outs.len(), 3);
        assert_close(
            &outs[0],
            &[2, 3, 2],
            &[
                -1.0463713, -0.9240502, -0.6472958, -0.3106115, -3.2287507, -2.7159128, 0.7513744,
                1.219047, 2.1680684, 2.7898383, 0.580_48, 1.3641825,
            ],
        );
        assert_close(&outs[1], &[3], &[2.11086, 3.6826, 5.9642997]);
        assert_close(&outs[2], &[3], &[14.164792, 23.853092, 33.164448]);
        // The running statistics take the mean input's type.
        let mean64 = Tensor::new(vec![3], TensorData::F64(vec![0.5, 1., 2.])).unwrap();
        let ins = [Some(&x), Some(&s), Some(&b), Some(&mean64), Some(&var)];
        let outs = eval(&op, &ins).unwrap();
        assert_eq!(outs[0].dtype(), DType::F32);
        assert_eq!(outs[1].dtype(), DType::F64);
        // Inference form: one output, the given statistics.
        let op = Op::BatchNormalization {
            epsilon: 1e-2,
            training_momentum: None,
        };
        let outs = eval(
            &op,
            &[Some(&x), Some(&s), Some(&b), Some(&mean), Some(&var)],
        )
        .unwrap();
        assert_eq!(outs.len(), 1);
        assert!((outs[0].to_f32_vec()[0] - (-0.5 / 1.01f32.sqrt())).abs() < 1e-6);
        // An empty batch gives NaN statistics, not a panic.
        let xe = t(&[0, 3, 2], vec![]);
        let op = Op::BatchNormalization {
            epsilon: 1e-2,
            training_momentum: Some(0.8),
        };
        let outs = eval(
            &op,
            &[Some(&xe), Some(&s), Some(&b), Some(&mean), Some(&var)],
        )
        .unwrap();
        assert_eq!(outs[0].shape(), &[0, 3, 2]);
        assert!(outs[1].to_f32_vec().iter().all(|v| v.is_nan()));
    }

    #[test]
    fn layer_norm_axes() {
        // torch.nn.functional.layer_norm(arange(12).reshape(2,2,3)**2,
        // [3], w=[1,2,3], b=[0.5,0,-0.5]).
        let xv: Vec<f32> = (0..12).map(|i| (i * i) as f32).collect();
        let x = t(&[2, 2, 3], xv);
        let s = t(&[3], vec![1., 2., 3.]);
        let b = t(&[3], vec![0.5, 0., -0.5]);
        let op = Op::LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
        };
        let outs = eval(&op, &[Some(&x), Some(&s), Some(&b)]).unwrap();
        assert_eq!(outs.len(), 3);
        // torch.var_mean(x, -1, unbiased=False): mean and 1/sqrt(var+eps).
        assert_close(
            &outs[1],
            &[2, 2, 1],
            &[1.6666666, 16.666666, 49.666668, 100.666664],
        );
        assert_close(
            &outs[2],
            &[2, 2, 1],
            &[0.5883474, 0.15269595, 0.087407485, 0.061211742],
        );
        let y = &outs[0];
        assert_close(
            y,
            &[2, 2, 3],
            &[
                -0.48057896,
                -0.7844631,
                3.6184318,
                -0.67066896,
                -0.20359443,
                3.3173995,
                -0.6945691,
                -0.11654354,
                3.2585216,
                -0.70383084,
                -0.08161534,
                3.2339168,
            ],
        );
        // axis 1 over [2, 3], scale [2,3] = 1, no bias.
        let op = Op::LayerNormalization {
            axis: 1,
            epsilon: 1e-5,
        };
        let ones = t(&[2, 3], vec![1.; 6]);
        let y = run(&op, &[Some(&seq(&[2, 2, 3])), Some(&ones), None]).unwrap();
        let row = [
            -1.4638476,
            -0.87830853,
            -0.29276952,
            0.29276952,
            0.87830853,
            1.4638476,
        ];
        let want: Vec<f32> = row.iter().chain(row.iter()).copied().collect();
        assert_close(&y, &[2, 2, 3], &want);
        // axis 0: one row; the statistics are f32 even for f64 X.
        let op0 = Op::LayerNormalization {
            axis: 0,
            epsilon: 1e-5,
        };
        let x64 = Tensor::new(vec![2, 3], TensorData::F64(vec![1., 2., 3., 4., 5., 6.])).unwrap();
        let s64 = Tensor::new(vec![2, 3], TensorData::F64(vec![1.; 6])).unwrap();
        let outs = eval(&op0, &[Some(&x64), Some(&s64)]).unwrap();
        assert_eq!(outs[0].dtype(), DType::F64);
        assert_eq!(outs[1].dtype(), DType::F32);
        assert_close(&outs[1], &[1, 1], &[3.5]);
        assert_close(&outs[2], &[1, 1], &[0.58553904]);
        // Scale that does not broadcast.
        let bad = t(&[2], vec![1.; 2]);
        assert!(run(&op, &[Some(&x), Some(&bad)]).is_err());
        let op = Op::LayerNormalization {
            axis: 3,
            epsilon: 1e-5,
        };
        assert!(run(&op, &[Some(&x), Some(&s)]).is_err());
    }

    #[test]
    fn instance_norm_and_dtypes() {
        // x = arange(12)**2 as [2,2,3], scale [1,2], B [0,1].
        let xv: Vec<f32> = (0..12).map(|i| (i * i) as f32).collect();
        let x = t(&[2, 2, 3], xv.clone());
        let s = t(&[2], vec![1., 2.]);
        let b = t(&[2], vec![0., 1.]);
        let op = Op::InstanceNormalization { epsilon: 1e-5 };
        let y = run(&op, &[Some(&x), Some(&s), Some(&b)]).unwrap();
        // torch.nn.functional.instance_norm(x, weight=s, bias=b, eps=1e-5)
        assert_close(
            &y,
            &[2, 2, 3],
            &[
                -0.98057896,
                -0.39223158,
                1.3728106,
                -1.3413376,
                0.7964058,
                3.5449328,
                -1.1945689,
                -0.05827164,
                1.2528405,
                -1.4076618,
                0.9183844,
                3.4892776,
            ],
        );
        // f16 round trip keeps the dtype.
        let xh = Tensor::new(
            vec![1, 1, 2],
            TensorData::F16(vec![f16::from_f32(1.0), f16::from_f32(3.0)]),
        )
        .unwrap();
        let sh = Tensor::new(vec![1], TensorData::F16(vec![f16::from_f32(1.0)])).unwrap();
        let bh = Tensor::new(vec![1], TensorData::F16(vec![f16::from_f32(0.0)])).unwrap();
        let y = run(&op, &[Some(&xh), Some(&sh), Some(&bh)]).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let yv = y.to_f32_vec();
        assert!(
            (yv[0] + 1.0).abs() < 1e-3 && (yv[1] - 1.0).abs() < 1e-3,
            "{yv:?}"
        );
        // Integers are rejected.
        let xi = Tensor::from_i64(vec![1, 1, 2], vec![1, 2]).unwrap();
        assert!(run(&op, &[Some(&xi), Some(&s), Some(&b)]).is_err());
        // Empty spatial dims are fine.
        let xe = t(&[1, 2, 0], vec![]);
        let y = run(&op, &[Some(&xe), Some(&s), Some(&b)]).unwrap();
        assert_eq!(y.shape(), &[1, 2, 0]);
    }
}
