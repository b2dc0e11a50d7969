//! Int8 GEMM and convolution vs f32, side by side: `cargo bench --bench
//! qgemm`. Criterion's throughput is set to the product's operations
//! (`2·m·n·k` "elements", a multiply-add counting 2), so its `thrpt` line
//! reads as GOP/s ("Gelem/s"). Each shape runs as
//!
//! * `f32`: `sgemm_packed` with B packed once (the runtime's MatMul path),
//!   or the f32 fused convolution with prepacked weights;
//! * `i8_exact`: `qgemm` / `qconv2d` with full-range i8 weights (the
//!   `vpmaddwd` kernel on AVX2);
//! * `i8_7bit`: the same with weights in [−64, 63] (the `vpmaddubsw`
//!   kernel on AVX2),
//!
//! int8 with the dequantizing f32 epilogue (per-channel scales, bias), on
//! 1 and 2 threads. Activations are already u8 (quantizing them is a
//! separate, memory-bound pass).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mlc::ir::{AutoPad, ConvAttrs, Op};
use mlc::kernels::cpu::gemm::{pack_b, sgemm_packed, Epilogue};
use mlc::kernels::cpu::qconv::{pack_conv, qconv2d, QConvGeom};
use mlc::kernels::cpu::qgemm::{qgemm, QEpilogue, QMatA, QOut, QPackedB};
use mlc::kernels::cpu::{prepack, run_node_packed, CpuCtx, View, ViewMut};
use std::time::Duration;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = mlc::inputs::SplitMix64::new(seed);
    (0..len)
        .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
        .collect()
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = mlc::inputs::SplitMix64::new(seed);
    (0..len).map(|_| rng.below(256) as u8).collect()
}

/// Weights in [-128, 127], or [-64, 63] when `seven_bit`.
fn weights(len: usize, seed: u64, seven_bit: bool) -> Vec<i8> {
    let mut rng = mlc::inputs::SplitMix64::new(seed);
    let (lo, span) = if seven_bit { (-64, 128) } else { (-128, 256) };
    (0..len)
        .map(|_| (lo + rng.below(span) as i64) as i8)
        .collect()
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn bench_qgemm(c: &mut Criterion) {
    let shapes: [(&str, usize, usize, usize); 4] = [
        ("1024", 1024, 1024, 1024),
        ("bert_128x384x1536", 128, 1536, 384),
        ("bert_128x1536x384", 128, 384, 1536),
        ("conv3x3_56x56x64_as_gemm", 3136, 64, 576),
    ];
    let mut g = group(c, "qgemm");
    for threads in [1usize, 2] {
        let cx = CpuCtx::new(threads).expect("thread pool starts");
        for &(name, m, n, k) in &shapes {
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            let af = values(m * k, 1);
            let bf = values(k * n, 2);
            let bias = values(n, 3);
            let pf = pack_b(k, n, &bf, n, false, cx.features);
            let mut cf = vec![0.0f32; m * n];
            let ep = Epilogue {
                bias_col: Some(&bias),
                ..Default::default()
            };
            g.bench_function(BenchmarkId::new(format!("f32/{threads}t"), name), |bch| {
                bch.iter(|| sgemm_packed(m, 1.0, &af, k, false, &pf, &mut cf, n, &ep, &cx))
            });
            let a = bytes(m * k, 4);
            let scales: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-6).collect();
            for (kind, seven) in [("i8_exact", false), ("i8_7bit", true)] {
                let b = weights(k * n, 5, seven);
                let pb = QPackedB::new(k, n, &b, n, false, cx.features).expect("k fits");
                let mut out = vec![0.0f32; m * n];
                let qa = QMatA {
                    data: &a,
                    ld: k,
                    trans: false,
                    zero_point: 121,
                };
                let qep = QEpilogue {
                    a_scale: 0.02,
                    b_scales: &scales,
                    bias: Some(&bias),
                    residual: None,
                    act: None,
                };
                g.bench_function(
                    BenchmarkId::new(format!("{kind}/{threads}t"), name),
                    |bch| bch.iter(|| qgemm(m, qa, &pb, QOut::F32(&mut out, qep), n, &cx)),
                );
            }
        }
    }
    g.finish();
}

fn bench_qconv(c: &mut Criterion) {
    // ResNet's 3x3 at 56x56x64, and MobileNet's depthwise 3x3.
    let cases: [(&str, [usize; 4], usize, usize); 2] = [
        ("resnet3x3_64x56x56_to64", [1, 64, 56, 56], 64, 1),
        ("depthwise3x3_144x56x56", [1, 144, 56, 56], 144, 144),
    ];
    let mut g = group(c, "qconv");
    for threads in [1usize, 2] {
        let cx = CpuCtx::new(threads).expect("thread pool starts");
        for &(name, xs, m, grp) in &cases {
            let cg = xs[1] / grp;
            let p = xs[2] * xs[3];
            g.throughput(Throughput::Elements((2 * m * p * cg * 9) as u64));
            let x_shape = xs.to_vec();
            let w_shape = vec![m, cg, 3, 3];
            let y_shape = vec![1, m, xs[2], xs[3]];
            let xf = values(xs.iter().product(), 1);
            let wf = values(m * cg * 9, 2);
            let bias = values(m, 3);
            let attrs = ConvAttrs {
                kernel_shape: vec![3, 3],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![1; 4],
                auto_pad: AutoPad::NotSet,
                group: grp,
            };
            let op = Op::Conv(attrs);
            let b_shape = vec![m];
            let wv = View {
                shape: &w_shape,
                data: &wf,
            };
            let packed = prepack(&op, &[None, Some(wv), None], &y_shape, &cx);
            let mut yf = vec![0.0f32; m * p];
            g.bench_function(BenchmarkId::new(format!("f32/{threads}t"), name), |bch| {
                bch.iter(|| {
                    let inputs = [
                        Some(View {
                            shape: &x_shape,
                            data: &xf,
                        }),
                        Some(wv),
                        Some(View {
                            shape: &b_shape,
                            data: &bias,
                        }),
                    ];
                    let mut outs = [ViewMut {
                        shape: &y_shape,
                        data: &mut yf,
                    }];
                    let done = run_node_packed(&op, &inputs, &mut outs, packed.as_ref(), &cx)
                        .expect("conv runs");
                    assert!(done, "no fast path for {name}");
                })
            });
            let x = bytes(xs.iter().product(), 4);
            let scales: Vec<f32> = (0..m).map(|j| 0.001 + j as f32 * 1e-6).collect();
            let geom = QConvGeom {
                kernel: [3, 3],
                strides: [1, 1],
                dilations: [1, 1],
                pads: [1; 4],
                group: grp,
            };
            for (kind, seven) in [("i8_exact", false), ("i8_7bit", true)] {
                let w = weights(m * cg * 9, 5, seven);
                let pw = pack_conv(&w, [m, cg, 3, 3], grp, cx.features).expect("packs");
                let mut y = vec![0.0f32; m * p];
                let qep = QEpilogue {
                    a_scale: 0.02,
                    b_scales: &scales,
                    bias: Some(&bias),
                    residual: None,
                    act: None,
                };
                g.bench_function(
                    BenchmarkId::new(format!("{kind}/{threads}t"), name),
                    |bch| {
                        bch.iter(|| qconv2d(&x, xs, 121, &geom, &pw, QOut::F32(&mut y, qep), &cx))
                    },
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_qgemm, bench_qconv);
criterion_main!(benches);
