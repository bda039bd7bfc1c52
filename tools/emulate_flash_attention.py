"""Lane-level emulation of kernels/attention.cu (flash_fwd) on the CPU, against softmax(QKᵀ·s)V.

The emulation follows the kernel's indexing line by line: per warp and lane (g = lane / 4,
t = lane % 4) it gathers exactly the shared-memory words the kernel loads into mma.sync fragments,
multiplies them with the PTX ISA's fragment layouts for m16n8k16 / m16n8k8 (row.col, f32
accumulate), converts the P accumulators into A fragments as the kernel does, and runs the
base-2 online softmax, masking and final quad reductions. It checks the kernel's index arithmetic
and fragment bookkeeping without a GPU; it cannot check the hardware's behaviour itself.

Usage: tools/.venv-ref/bin/python tools/emulate_flash_attention.py   (needs numpy only)
"""

import numpy as np

BQ = 64


def f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def mma_k16(c, a, b):
    """c[lane][4] += A(16x16) · B(16x8) with fragments as the PTX ISA lays them out.

    a[lane] = 8 values a0..a7, b[lane] = 4 values b0..b3 (already split from the .f16x2 regs).
    """
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(8):
            row = g if (i < 2 or 4 <= i < 6) else g + 8
            col = 2 * t + (i & 1) + (8 if i >= 4 else 0)
            A[row, col] = a[lane][i]
        for i in range(4):
            B[2 * t + (i & 1) + (8 if i >= 2 else 0), g] = b[lane][i]
    C = A @ B
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            c[lane][i] += C[g if i < 2 else g + 8, 2 * t + (i & 1)]


def mma_k8(c, a, b):
    A = np.zeros((16, 8), np.float32)
    B = np.zeros((8, 8), np.float32)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            A[g if i < 2 else g + 8, 2 * t + (i & 1)] = a[lane][i]
        for i in range(2):
            B[2 * t + i, g] = b[lane][i]
    C = A @ B
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            c[lane][i] += C[g if i < 2 else g + 8, 2 * t + (i & 1)]


def ldmatrix_trans(smem, addrs, count):
    """ldmatrix.sync.aligned.m8n8.x{count}.trans.shared.b16 per the PTX ISA: lanes 8i..8i+7 give
    the (row, col) start of the 8 rows of matrix i (8 consecutive 16-bit values each); register i
    of lane l receives (M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4]) (low half first)."""
    regs = [[None] * count for _ in range(32)]
    for i in range(count):
        m = [[smem[addrs[8 * i + r][0], addrs[8 * i + r][1] + c] for c in range(8)] for r in range(8)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            regs[lane][i] = (m[2 * t][g], m[2 * t + 1][g])
    return regs


def flash_fwd(q, k, v, heads, d, bn, scale, causal):
    """q: [b, tq, heads*d], k/v: [b, tk, heads*d] (already rounded to f16). Returns o like q."""
    b_, tq, width = q.shape
    tk = k.shape[1]
    sd = 40 if d == 40 else d + 8
    ks_steps, rem, nt_tiles, dt_tiles = d // 16, d % 16 != 0, bn // 8, d // 8
    o = np.full(q.shape, np.nan, np.float32)
    scale_log2 = scale * np.log2(np.e)
    for bh in range(b_ * heads):
        b, h = divmod(bh, heads)
        for q0 in range(0, tq, BQ):
            qs = np.zeros((BQ, sd), np.float32)
            valid = min(BQ, tq - q0)
            qs[:valid, :d] = q[b, q0:q0 + valid, h * d:(h + 1) * d]
            for warp in range(4):
                # Q fragments: per lane, KS x 8 values (+ 4 for the k8 remainder).
                qa = [[None] * 32 for _ in range(ks_steps)]
                qr = [None] * 32
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    r0 = warp * 16 + g
                    r1 = r0 + 8
                    for s in range(ks_steps):
                        c = s * 16 + 2 * t
                        qa[s][lane] = [qs[r0, c], qs[r0, c + 1], qs[r1, c], qs[r1, c + 1],
                                       qs[r0, c + 8], qs[r0, c + 9], qs[r1, c + 8], qs[r1, c + 9]]
                    if rem:
                        c = ks_steps * 16 + 2 * t
                        qr[lane] = [qs[r0, c], qs[r0, c + 1], qs[r1, c], qs[r1, c + 1]]
                acc = [[[0.0] * 4 for _ in range(32)] for _ in range(dt_tiles)]
                m0 = [-np.inf] * 32
                m1 = [-np.inf] * 32
                l0 = [0.0] * 32
                l1 = [0.0] * 32
                kv_end = min(tk, q0 + BQ) if causal else tk
                for kv0 in range(0, kv_end, bn):
                    ks = np.zeros((bn, sd), np.float32)
                    vs = np.zeros((bn, sd), np.float32)
                    kvalid = min(bn, tk - kv0)
                    ks[:kvalid, :d] = k[b, kv0:kv0 + kvalid, h * d:(h + 1) * d]
                    vs[:kvalid, :d] = v[b, kv0:kv0 + kvalid, h * d:(h + 1) * d]
                    s_acc = [[[0.0] * 4 for _ in range(32)] for _ in range(nt_tiles)]
                    for nt in range(nt_tiles):
                        for st in range(ks_steps):
                            bfr = []
                            for lane in range(32):
                                g, t = lane >> 2, lane & 3
                                row, c = nt * 8 + g, st * 16 + 2 * t
                                bfr.append([ks[row, c], ks[row, c + 1], ks[row, c + 8], ks[row, c + 9]])
                            mma_k16(s_acc[nt], qa[st], bfr)
                        if rem:
                            bfr = []
                            for lane in range(32):
                                g, t = lane >> 2, lane & 3
                                row, c = nt * 8 + g, ks_steps * 16 + 2 * t
                                bfr.append([ks[row, c], ks[row, c + 1]])
                            mma_k8(s_acc[nt], qr, bfr)
                    # Masking, row max over the quad, online softmax (per lane, then quad shuffles).
                    mx0, mx1 = [-np.inf] * 32, [-np.inf] * 32
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        row0 = q0 + warp * 16 + g
                        row1 = row0 + 8
                        for nt in range(nt_tiles):
                            for e in range(4):
                                col = kv0 + nt * 8 + 2 * t + (e & 1)
                                row = row0 if e < 2 else row1
                                masked = col >= tk or (causal and col > row)
                                s_acc[nt][lane][e] = -np.inf if masked else s_acc[nt][lane][e] * scale_log2
                            mx0[lane] = max(mx0[lane], s_acc[nt][lane][0], s_acc[nt][lane][1])
                            mx1[lane] = max(mx1[lane], s_acc[nt][lane][2], s_acc[nt][lane][3])
                    for arr in (mx0, mx1):
                        for off in (1, 2):
                            prev = arr[:]
                            for lane in range(32):
                                arr[lane] = max(prev[lane], prev[lane ^ off])
                    for lane in range(32):
                        mn0, mn1 = max(m0[lane], mx0[lane]), max(m1[lane], mx1[lane])
                        sh0 = 0.0 if mn0 == -np.inf else mn0
                        sh1 = 0.0 if mn1 == -np.inf else mn1
                        al0, al1 = np.exp2(m0[lane] - sh0), np.exp2(m1[lane] - sh1)
                        m0[lane], m1[lane] = mn0, mn1
                        ps0 = ps1 = 0.0
                        for nt in range(nt_tiles):
                            sa = s_acc[nt][lane]
                            sa[0], sa[1] = np.exp2(sa[0] - sh0), np.exp2(sa[1] - sh0)
                            sa[2], sa[3] = np.exp2(sa[2] - sh1), np.exp2(sa[3] - sh1)
                            ps0 += sa[0] + sa[1]
                            ps1 += sa[2] + sa[3]
                        l0[lane] = l0[lane] * al0 + ps0
                        l1[lane] = l1[lane] * al1 + ps1
                        for dt in range(dt_tiles):
                            a = acc[dt][lane]
                            a[0] *= al0
                            a[1] *= al0
                            a[2] *= al1
                            a[3] *= al1
                    for kk in range(bn // 16):
                        pa = []
                        for lane in range(32):
                            s0, s1 = s_acc[2 * kk][lane], s_acc[2 * kk + 1][lane]
                            # pack2(lo, hi) per register: reg0 = (s0[0], s0[1]), reg1 = (s0[2], s0[3]),
                            # reg2 = (s1[0], s1[1]), reg3 = (s1[2], s1[3]); rounded to f16.
                            pa.append([float(x) for x in f16([s0[0], s0[1], s0[2], s0[3], s1[0], s1[1], s1[2], s1[3]])])
                        # V fragments through ldmatrix.trans, as the kernel addresses it.
                        row_of = [kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7) for lane in range(32)]
                        for dt in range(0, dt_tiles - 1, 2):
                            addrs = [(row_of[lane], (lane >> 4) * 8 + dt * 8) for lane in range(32)]
                            regs = ldmatrix_trans(vs, addrs, 4)
                            mma_k16(acc[dt], pa, [regs[l][0] + regs[l][1] for l in range(32)])
                            mma_k16(acc[dt + 1], pa, [regs[l][2] + regs[l][3] for l in range(32)])
                        if dt_tiles % 2:
                            addrs = [(row_of[lane], (dt_tiles - 1) * 8) for lane in range(32)]
                            regs = ldmatrix_trans(vs, addrs, 2)
                            mma_k16(acc[dt_tiles - 1], pa, [regs[l][0] + regs[l][1] for l in range(32)])
                for arr in (l0, l1):
                    for off in (1, 2):
                        prev = arr[:]
                        for lane in range(32):
                            arr[lane] = prev[lane] + prev[lane ^ off]
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    row0 = q0 + warp * 16 + g
                    for row, lsum, e0 in ((row0, l0[lane], 0), (row0 + 8, l1[lane], 2)):
                        if row >= tq:
                            continue
                        inv = 1.0 / lsum if lsum > 0 else 0.0
                        for dt in range(dt_tiles):
                            col = h * d + dt * 8 + 2 * t
                            o[b, row, col:col + 2] = f16([acc[dt][lane][e0] * inv, acc[dt][lane][e0 + 1] * inv])
    return o


def reference(q, k, v, heads, d, scale, causal):
    b_, tq, _ = q.shape
    tk = k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for b in range(b_):
        for h in range(heads):
            qh = q[b, :, h * d:(h + 1) * d].astype(np.float64)
            kh = k[b, :, h * d:(h + 1) * d].astype(np.float64)
            vh = v[b, :, h * d:(h + 1) * d].astype(np.float64)
            s = qh @ kh.T * scale
            if causal:
                s = np.where(np.arange(tk)[None, :] > np.arange(tq)[:, None], -np.inf, s)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            out[b, :, h * d:(h + 1) * d] = (s / s.sum(axis=1, keepdims=True)) @ vh
    return out


def main():
    rng = np.random.default_rng(0)
    cases = [  # (d, bn, b, tq, tk, heads, causal, gain)
        (40, 64, 1, 70, 77, 2, False, 1.0),
        (40, 64, 1, 65, 130, 1, False, 4.0),
        (64, 64, 1, 77, 77, 1, True, 1.0),
        (80, 64, 1, 33, 65, 1, False, 1.0),
        (160, 32, 2, 20, 64, 1, False, 1.0),
    ]
    worst = 0.0
    for d, bn, b, tq, tk, heads, causal, gain in cases:
        q = f16(rng.standard_normal((b, tq, heads * d)) * gain)
        k = f16(rng.standard_normal((b, tk, heads * d)))
        v = f16(rng.standard_normal((b, tk, heads * d)))
        scale = 1.0 / np.sqrt(d)
        got = flash_fwd(q, k, v, heads, d, bn, scale, causal)
        want = reference(q, k, v, heads, d, scale, causal)
        assert np.isfinite(got).all(), "unwritten or non-finite output"
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        worst = max(worst, rel)
        print(f"d={d:3d} bn={bn} b={b} tq={tq:3d} tk={tk:3d} heads={heads} causal={causal!s:5} gain={gain}: rel err {rel:.2e}")
    assert worst < 2e-3, worst
    print("ok: emulated flash_fwd matches the fp64 reference within 2e-3")


if __name__ == "__main__":
    main()
