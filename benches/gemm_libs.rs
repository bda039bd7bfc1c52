//! The GEMM library choice, measured: the `gemm` crate (what the CPU backend uses, through
//! `Tensor::matmul`) against ndarray's `dot` (the `matrixmultiply` crate, with its threading
//! feature) on the UNet's heaviest product shapes, both using every core. Throughput is in FLOPs,
//! so criterion prints GFLOP/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use sd_core::{Device, Tensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1 << 24) as f32
                - 0.5
        })
        .collect()
}

fn libraries(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_libs");
    g.sample_size(10);
    // (M, K, N): conv3x3 64x64 as im2col, GEGLU FF1, QKV, deep conv3x3, attention PV (d = 40).
    for (m, k, n) in [
        (8192, 2880, 320),
        (8192, 320, 2560),
        (8192, 320, 320),
        (512, 11520, 1280),
        (4096, 4096, 40),
    ] {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let ta = Tensor::from_vec(a.clone(), [m, k], Device::Cpu).expect("tensor");
        let tb = Tensor::from_vec(b.clone(), [k, n], Device::Cpu).expect("tensor");
        g.bench_function(format!("gemm {m}x{k}x{n}"), |bench| {
            bench.iter(|| ta.matmul(&tb).expect("matmul"))
        });
        let na = Array2::from_shape_vec((m, k), a).expect("array");
        let nb = Array2::from_shape_vec((k, n), b).expect("array");
        g.bench_function(format!("matrixmultiply {m}x{k}x{n}"), |bench| {
            bench.iter(|| na.dot(&nb))
        });
    }
    g.finish();
}

criterion_group!(benches, libraries);
criterion_main!(benches);
