//! GEMM throughput: `cargo bench --bench gemm`. Criterion's throughput is
//! set to the product's flops (`2·m·n·k` "elements"), so its `thrpt` line
//! reads directly as GFLOP/s ("Gelem/s"). Square sizes 64..1024 and a
//! BERT-style projection (128 tokens × hidden 384), on 1 and 2 threads.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mlc::kernels::cpu::gemm::{sgemm, Epilogue};
use mlc::kernels::cpu::CpuCtx;
use std::time::Duration;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = mlc::inputs::SplitMix64::new(seed);
    (0..len)
        .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
        .collect()
}

fn bench_gemm(c: &mut Criterion) {
    let shapes: [(&str, usize, usize, usize); 5] = [
        ("64", 64, 64, 64),
        ("256", 256, 256, 256),
        ("512", 512, 512, 512),
        ("1024", 1024, 1024, 1024),
        ("bert_128x384x384", 128, 384, 384),
    ];
    let mut group = c.benchmark_group("sgemm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for threads in [1usize, 2] {
        let cx = CpuCtx::new(threads).expect("thread pool starts");
        for &(name, m, n, k) in &shapes {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let mut out = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{threads}t"), name),
                &(m, n, k),
                |bch, &(m, n, k)| {
                    bch.iter(|| {
                        sgemm(
                            m,
                            n,
                            k,
                            1.0,
                            &a,
                            k,
                            false,
                            &b,
                            n,
                            false,
                            &mut out,
                            n,
                            &Epilogue::default(),
                            &cx,
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
