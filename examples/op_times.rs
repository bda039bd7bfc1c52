//! Quick per-op timings of the CPU kernels at SD 1.5 shapes: median wall time and process CPU
//! time per call, and GFLOP/s from the wall time. Lighter than the criterion benches, and the CPU
//! time stays meaningful when other processes share the machine.
//!
//! Usage: `cargo run --release --example op_times -- [--reps N] [--only SUBSTRING]`

use std::time::Instant;

use sd_core::tensor::{Activation, Conv2dParams};
use sd_core::{Device, Result, Tensor};

fn filled(shape: &[usize], seed: u32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1 << 24) as f32
                - 0.5
        })
        .collect();
    Tensor::from_vec(data, shape.to_vec(), Device::Cpu)
}

/// User + system CPU time of this process, in seconds (Linux; 0 elsewhere).
fn cpu_time() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(name: &str, flops: f64, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    f()?;
    let mut walls = Vec::new();
    let c0 = cpu_time();
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        walls.push(t0.elapsed().as_secs_f64());
    }
    let cpu = (cpu_time() - c0) / reps as f64;
    let wall = median(walls);
    println!(
        "{name:<40} wall {:>9.2} ms  cpu {:>9.2} ms  {:>7.1} GFLOP/s",
        wall * 1e3,
        cpu * 1e3,
        flops / wall / 1e9
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default();
    let run = |name: &str| name.contains(only.as_str());

    for (m, k, n) in [
        (8192, 2880, 320),
        (8192, 320, 2560),
        (8192, 320, 320),
        (512, 11520, 1280),
    ] {
        let name = format!("gemm {m}x{k}x{n}");
        if run(&name) {
            let a = filled(&[m, k], 1)?;
            let b = filled(&[k, n], 2)?;
            time(&name, (2 * m * k * n) as f64, reps, || {
                a.matmul(&b).map(|_| ())
            })?;
        }
    }
    for (b, h, cin, cout, stride) in [
        (2, 64, 320, 320, 1),
        (2, 64, 960, 320, 1),
        (2, 32, 640, 640, 1),
        (2, 16, 1280, 1280, 1),
        (2, 8, 1280, 1280, 1),
        (2, 64, 320, 320, 2),
        (1, 256, 256, 256, 1),
        (1, 512, 128, 128, 1),
        (1, 64, 512, 512, 1),
        (1, 512, 128, 3, 1),
        (2, 64, 320, 4, 1),
    ] {
        let name = format!("conv3x3 s{stride} b{b} {h}x{h} {cin}->{cout}");
        if run(&name) {
            let x = filled(&[b, h, h, cin], 3)?;
            let w = filled(&[3, 3, cin, cout], 4)?;
            let bias = filled(&[cout], 5)?;
            let oh = h / stride;
            let flops = (2 * b * oh * oh * 9 * cin * cout) as f64;
            time(&name, flops, reps, || {
                x.conv2d(&w, Some(&bias), Conv2dParams::new(stride, 1))
                    .map(|_| ())
            })?;
        }
    }
    for (tokens, width, kv, heads) in [
        (4096, 320, 4096, 8),
        (1024, 640, 1024, 8),
        (4096, 320, 77, 8),
        (4096, 512, 4096, 1),
    ] {
        let name = format!("attention b2 q{tokens} kv{kv} w{width} h{heads}");
        if run(&name) {
            let q = filled(&[2, tokens, width], 9)?;
            let k = filled(&[2, kv, width], 10)?;
            let v = filled(&[2, kv, width], 11)?;
            let flops = (2 * 2 * 2 * tokens * kv * width) as f64;
            time(&name, flops, reps, || {
                Tensor::attention(&q, &k, &v, heads, 0.1, false).map(|_| ())
            })?;
        }
    }
    for (shape, c) in [([2, 64, 64, 320], 320), ([1, 512, 512, 128], 128)] {
        let name = format!("group_norm+silu {shape:?}");
        if run(&name) {
            let x = filled(&shape, 12)?;
            let gamma = filled(&[c], 13)?;
            let beta = filled(&[c], 14)?;
            let n = x.elem_count() as f64;
            time(&name, n, reps, || {
                x.group_norm(32, &gamma, &beta, 1e-5, Activation::Silu)
                    .map(|_| ())
            })?;
        }
    }
    let name = "add b2 64x64x320";
    if run(name) {
        let a = filled(&[2, 64, 64, 320], 15)?;
        let b = filled(&[2, 64, 64, 320], 16)?;
        time(name, a.elem_count() as f64, reps, || a.add(&b).map(|_| ()))?;
    }
    Ok(())
}
