//! Criterion benchmarks of the CPU kernels at SD 1.5's real shapes (batch 2, 512x512 image).
//! Throughput is reported in elements = FLOPs, so criterion prints GFLOP/s directly.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sd_core::tensor::{Activation, Conv2dParams};
use sd_core::{Device, Tensor};

fn filled(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1 << 24) as f32
                - 0.5
        })
        .collect();
    Tensor::from_vec(data, shape.to_vec(), Device::Cpu).expect("tensor")
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    // (M, K, N) of the heaviest UNet products: conv3x3 at 64x64 as im2col, GEGLU FF1, QKV, deep conv.
    for (m, k, n) in [
        (8192, 2880, 320),
        (8192, 320, 2560),
        (8192, 320, 320),
        (512, 11520, 1280),
    ] {
        let a = filled(&[m, k], 1);
        let b = filled(&[k, n], 2);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}"), |bench| {
            bench.iter(|| a.matmul(&b).expect("matmul"))
        });
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10);
    for (h, cin, cout) in [(64, 320, 320), (32, 640, 640), (16, 1280, 1280)] {
        let x = filled(&[2, h, h, cin], 3);
        let w = filled(&[3, 3, cin, cout], 4);
        let bias = filled(&[cout], 5);
        g.throughput(Throughput::Elements(
            (2 * 2 * h * h * 9 * cin * cout) as u64,
        ));
        g.bench_function(format!("3x3 b2 {h}x{h} {cin}->{cout}"), |bench| {
            bench.iter(|| {
                x.conv2d(&w, Some(&bias), Conv2dParams::new(1, 1))
                    .expect("conv")
            })
        });
    }
    let x = filled(&[1, 256, 256, 256], 6);
    let w = filled(&[3, 3, 256, 256], 7);
    let bias = filled(&[256], 8);
    g.throughput(Throughput::Elements(2u64 * 256 * 256 * 9 * 256 * 256));
    g.bench_function("3x3 vae 256x256 256->256", |bench| {
        bench.iter(|| {
            x.conv2d(&w, Some(&bias), Conv2dParams::new(1, 1))
                .expect("conv")
        })
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    // Self-attention at 64x64 (8 heads of 40) and 32x32 (8 of 80), cross-attention to 77 tokens.
    for (tokens, width, kv) in [(4096, 320, 4096), (1024, 640, 1024), (4096, 320, 77)] {
        let q = filled(&[2, tokens, width], 9);
        let k = filled(&[2, kv, width], 10);
        let v = filled(&[2, kv, width], 11);
        g.throughput(Throughput::Elements(
            (2 * 2 * 2 * tokens * kv * width) as u64,
        ));
        g.bench_function(format!("b2 q{tokens} kv{kv} w{width}"), |bench| {
            bench.iter(|| Tensor::attention(&q, &k, &v, 8, 0.1, false).expect("attention"))
        });
    }
    g.finish();
}

fn group_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_norm");
    g.sample_size(10);
    let x = filled(&[2, 64, 64, 320], 12);
    let gamma = filled(&[320], 13);
    let beta = filled(&[320], 14);
    g.throughput(Throughput::Elements(x.elem_count() as u64));
    g.bench_function("b2 64x64x320 +silu", |bench| {
        bench.iter(|| {
            x.group_norm(32, &gamma, &beta, 1e-5, Activation::Silu)
                .expect("gn")
        })
    });
    let x = filled(&[1, 512, 512, 128], 15);
    let gamma = filled(&[128], 16);
    let beta = filled(&[128], 17);
    g.throughput(Throughput::Elements(x.elem_count() as u64));
    g.bench_function("vae 512x512x128 +silu", |bench| {
        bench.iter(|| {
            x.group_norm(32, &gamma, &beta, 1e-6, Activation::Silu)
                .expect("gn")
        })
    });
    g.finish();
}

criterion_group!(benches, gemm, conv, attention, group_norm);
criterion_main!(benches);
