//! Criterion benches of the fast f32 convolution kernels, reported as
//! throughput in FLOP (criterion prints "elem/s": read Gelem/s as GFLOP/s,
//! 2 FLOP per multiply-add):
//!
//! * ResNet 3x3: 1x64x56x56 -> 64 channels, pad 1 (im2col + GEMM);
//! * pointwise 1x1: 1x256x14x14 -> 1024 channels (GEMM on the input);
//! * MobileNet depthwise 3x3: 1x144x56x56, group 144, pad 1 (direct loop);
//!
//! each on 1 and 2 threads. Run with `cargo bench --bench conv`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mlc::ir::{AutoPad, ConvAttrs, Op};
use mlc::kernels::cpu::{run_node, CpuCtx, View, ViewMut};

struct Case {
    name: &'static str,
    x: [usize; 4],
    m: usize,
    k: usize,
    pad: usize,
    group: usize,
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A small LCG: deterministic, no dependency.
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench_conv(c: &mut Criterion) {
    let cases = [
        Case {
            name: "resnet3x3_64x56x56_to64",
            x: [1, 64, 56, 56],
            m: 64,
            k: 3,
            pad: 1,
            group: 1,
        },
        Case {
            name: "pointwise1x1_256x14x14_to1024",
            x: [1, 256, 14, 14],
            m: 1024,
            k: 1,
            pad: 0,
            group: 1,
        },
        Case {
            name: "depthwise3x3_144x56x56",
            x: [1, 144, 56, 56],
            m: 144,
            k: 3,
            pad: 1,
            group: 144,
        },
    ];
    let mut group = c.benchmark_group("conv");
    group.sample_size(20);
    for case in &cases {
        let [n, ch, h, w] = case.x;
        let cg = ch / case.group;
        let (oh, ow) = (h + 2 * case.pad - case.k + 1, w + 2 * case.pad - case.k + 1);
        let x_shape = case.x.to_vec();
        let w_shape = vec![case.m, cg, case.k, case.k];
        let b_shape = vec![case.m];
        let y_shape = vec![n, case.m, oh, ow];
        let x = values(x_shape.iter().product(), 1);
        let wt = values(w_shape.iter().product(), 2);
        let b = values(case.m, 3);
        let mut y = vec![0f32; y_shape.iter().product()];
        let op = Op::FusedConv {
            conv: ConvAttrs {
                kernel_shape: vec![case.k, case.k],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![case.pad; 4],
                auto_pad: AutoPad::NotSet,
                group: case.group,
            },
            act: Some(mlc::ir::Activation::Relu),
        };
        let flops = 2 * n * case.m * oh * ow * cg * case.k * case.k;
        group.throughput(Throughput::Elements(flops as u64));
        for threads in [1, 2] {
            let cx = CpuCtx::new(threads).expect("thread pool");
            group.bench_with_input(
                BenchmarkId::new(case.name, threads),
                &threads,
                |bench, _| {
                    bench.iter(|| {
                        let inputs = [
                            Some(View {
                                shape: &x_shape,
                                data: &x,
                            }),
                            Some(View {
                                shape: &w_shape,
                                data: &wt,
                            }),
                            Some(View {
                                shape: &b_shape,
                                data: &b,
                            }),
                        ];
                        let mut outputs = [ViewMut {
                            shape: &y_shape,
                            data: &mut y,
                        }];
                        let done = run_node(&op, &inputs, &mut outputs, &cx).expect("conv runs");
                        assert!(done, "no fast path for {}", case.name);
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
