"""Emulation of the three group-norm kernels of kernels/norm.cu (gn_stats, gn_finalize, gn_apply)
on the CPU, against numpy's group norm, for NHWC [B, HW, C] with G groups.

Follows the kernels' indexing: blocks of `rows_per_blk` rows per (blk, b), a per-channel shift
K_c = the block's first row, per-channel (mean, M2) folded per group with Chan's formula in
channel order, then blocks folded in order with their true row counts (the last block is short).
Checks the index arithmetic and the statistics, not the GPU.

Usage: tools/.venv-ref/bin/python tools/emulate_group_norm.py   (needs numpy only)
"""

import numpy as np


def chan_merge(state, n_b, mean_b, m2_b):
    n_a, mean_a, m2_a = state
    if n_b == 0:
        return state
    n = n_a + n_b
    delta = mean_b - mean_a
    fb = n_b / n
    return (n, mean_a + delta * fb, m2_a + m2_b + delta * delta * n_a * fb)


def group_norm_kernels(x, groups, gamma, beta, eps, rows_per_blk=64):
    b_, hw, c = x.shape
    x = x.astype(np.float32)
    cg = c // groups
    nblk = -(-hw // rows_per_blk)
    partial = np.full((b_, nblk, groups, 2), np.nan, np.float32)
    for b in range(b_):  # gn_stats: grid (nblk, B)
        for blk in range(nblk):
            r0, r1 = blk * rows_per_blk, min(hw, (blk + 1) * rows_per_blk)
            n = np.float32(r1 - r0)
            k = x[b, r0, :]
            d = x[b, r0:r1, :] - k
            s, ss = d.sum(axis=0), (d * d).sum(axis=0)
            mean_c = k + s / n
            m2_c = np.maximum(ss - s * s / n, 0)
            for g in range(groups):
                st = (0.0, 0.0, 0.0)
                for j in range(cg):
                    st = chan_merge(st, n, mean_c[g * cg + j], m2_c[g * cg + j])
                partial[b, blk, g] = (st[1], st[2])
    stats = np.zeros((b_, groups, 2), np.float32)
    for b in range(b_):  # gn_finalize: grid B
        for g in range(groups):
            st = (0.0, 0.0, 0.0)
            for blk in range(nblk):
                rows = min(hw, (blk + 1) * rows_per_blk) - blk * rows_per_blk
                st = chan_merge(st, rows * cg, *partial[b, blk, g])
            var = st[2] / st[0] if st[0] > 0 else 0.0
            stats[b, g] = (st[1], 1.0 / np.sqrt(var + eps))
    out = np.empty_like(x)  # gn_apply: flat index i -> (b, ch)
    flat = x.reshape(-1)
    for i in range(flat.size):
        ch = i % c
        b = i // (hw * c)
        mean, rstd = stats[b, ch // cg]
        out.reshape(-1)[i] = (flat[i] - mean) * rstd * gamma[ch] + beta[ch]
    return out


def reference(x, groups, gamma, beta, eps):
    b_, hw, c = x.shape
    xg = x.astype(np.float64).reshape(b_, hw, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(b_, hw, c) * gamma + beta


def main():
    rng = np.random.default_rng(1)
    for b, hw, c, groups, offset in [(2, 63, 40, 4, 0.0), (1, 150, 90, 3, 0.0), (2, 130, 20, 2, 30.0), (1, 64, 8, 2, 0.0)]:
        x = (rng.standard_normal((b, hw, c)) + offset).astype(np.float32)
        gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        got = group_norm_kernels(x, groups, gamma, beta, 1e-5)
        want = reference(x, groups, gamma, beta, 1e-5)
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        print(f"b={b} hw={hw:3d} c={c:2d} groups={groups} offset={offset:5.0f}: rel err {rel:.2e}")
        assert rel < 1e-5, rel
    print("ok: emulated group norm matches numpy within 1e-5")


if __name__ == "__main__":
    main()
