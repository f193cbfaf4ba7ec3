#!/usr/bin/python3
"""varserve against the public PyTorch reference (FoundationVision/VAR), side by side in one run.

    VAR_REFERENCE=DIR /usr/bin/python3 bench/vs_reference.py [--rounds 3] [--threads 2]

DIR is a checkout of github.com/FoundationVision/VAR (its models/ and dist.py; never part of this
repository: extract it into an ignored folder such as .ref/). Without it the script says so and
exits 0 (a skip, not a failure). Needs /usr/bin/python3 with numpy and torch (Debian's
python3-torch), and build/varserve (or VARSERVE_BIN).

Both sides run the same model, tests/fixtures/tiny (the reference builds its own VQVAE and VAR
with build_vae_var and loads the fixture's weights: the file's names are the reference's state-dict
keys under var. and vae.), the same settings (cfg 1.5, top-k 900, top-p 0.96), FP32 on the CPU with
the same thread count. Rounds alternate the two at batch 1 and batch 8 (varserve 1, reference 1,
varserve 8, reference 8, ...), so a change in the machine's load touches both; each side is warmed
up first. varserve's figure is `varserve bench`'s images/s (model loading excluded, as the
reference's model is built before its timing).

OpenBLAS picks its kernel table for the CPU when it loads; varserve pins the one runtime/blas.h
names (Debian 12's OpenBLAS puts some AVX-512 CPUs on its SSE3 kernels). By default this script
runs the reference and its sgemm probe on the same table (OPENBLAS_CORETYPE, set by re-executing
itself before torch loads); --reference-blas default leaves the reference OpenBLAS's own choice.

Also prints the machine's sgemm GFLOP/s (OpenBLAS, the library varserve's GEMMs run on, with its
own threads at the same count, a 2048³ product, the best of 5 before and 5 after the rounds: on a
shared machine the best is the one least disturbed) and, for each side, the fraction of that
roofline reached: GEMM FLOPs per image (every linear, convolution and attention product; the
elementwise work not counted) × images/s ÷ sgemm GFLOP/s.

Record results in bench/RESULTS.md with the command, the CPU (lscpu's model name), the date and the
load average (uptime): the machine is shared.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import re
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL = os.path.join(ROOT, 'tests', 'fixtures', 'tiny', 'model.safetensors')
CFG, TOP_K, TOP_P = 1.5, 900, 0.96
BATCHES = (1, 8)


def skip(msg):
    print('vs_reference: skipped: %s' % msg)
    sys.exit(0)


def fail(msg):
    print('vs_reference: %s' % msg, file=sys.stderr)
    sys.exit(2)


# ---- FLOPs of one image (cfg doubles the transformer's rows) ---------------------------------

def transformer_flops(c):
    C, V, L = c['embed_dim'], c['vocab_size'], c['depth']
    F = round(C * c['mlp_ratio'])
    pn = c['patch_nums']
    total, prefix = 0, 0
    for p in pn:
        t = p * p
        prefix += t
        per_tok = L * 2 * (3 * C * C + C * C + 2 * C * F)  # qkv, proj, fc1, fc2
        per_tok += L * 2 * 2 * prefix * C                   # scores and values over the prefix
        per_tok += 2 * C * V + 2 * c['z_channels'] * C      # head, word embedding
        per_row = L * 2 * C * 6 * C + 2 * C * 2 * C         # ada_lin per layer, head_nm
        total += 2 * (t * per_tok + per_row)                # two rows: cond and uncond
    return total


def decoder_flops(c):
    Cv, ch, mult, nb = c['z_channels'], c['vae_ch'], c['vae_ch_mult'], c['vae_num_res_blocks']
    P = c['patch_nums'][-1]
    conv = lambda cin, cout, k, r: 2 * cin * cout * k * k * r * r  # noqa: E731
    attn = lambda C, r: conv(C, 3 * C, 1, r) + conv(C, C, 1, r) + 2 * 2 * (r * r) ** 2 * C  # noqa: E731
    res = lambda cin, cout, r: conv(cin, cout, 3, r) + conv(cout, cout, 3, r) + \
        (conv(cin, cout, 1, r) if cin != cout else 0)  # noqa: E731
    top = len(mult) - 1
    bi = ch * mult[top]
    f = conv(Cv, Cv, 3, P) + conv(Cv, bi, 3, P) + 2 * res(bi, bi, P) + attn(bi, P)
    r = P
    for lv in reversed(range(len(mult))):
        bo = ch * mult[lv]
        for _ in range(nb + 1):
            f += res(bi, bo, r)
            bi = bo
            if lv == top:
                f += attn(bi, r)
        if lv != 0:
            r *= 2
            f += conv(bi, bi, 3, r)
    return f + conv(bi, 3, 3, r)


# ---- the machine's sgemm ---------------------------------------------------------------------

def sgemm_gflops(threads, np):
    name = ctypes.util.find_library('openblas') or 'libopenblas.so.0'
    try:
        blas = ctypes.CDLL(name)
    except OSError:
        return None
    blas.openblas_set_num_threads(ctypes.c_int(threads))
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    cm = np.zeros((n, n), dtype=np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    args = (101, 111, 111, n, n, n, ctypes.c_float(1.0), a.ctypes.data_as(fp), n,
            b.ctypes.data_as(fp), n, ctypes.c_float(0.0), cm.ctypes.data_as(fp), n)
    blas.cblas_sgemm(*args)  # warm-up
    best = float('inf')
    for _ in range(5):
        t0 = time.perf_counter()
        blas.cblas_sgemm(*args)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


# ---- the two sides ---------------------------------------------------------------------------

def load_reference(ref, cfg, threads):
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from var_ref import load_safetensors
    from convert_var import DROP_VAE, DROP_VAR
    sys.path.insert(0, ref)
    stubbed = False
    try:
        import huggingface_hub  # noqa: F401  (models/var.py's VARHF mixin; unused here)
    except ImportError:
        hub = types.ModuleType('huggingface_hub')
        hub.PyTorchModelHubMixin = type('PyTorchModelHubMixin', (), {})
        sys.modules['huggingface_hub'] = hub
        stubbed = True
    from models import build_vae_var
    if cfg['embed_dim'] != 64 * cfg['depth'] or cfg['num_heads'] != cfg['depth']:
        fail('build_vae_var makes width 64·depth and depth heads; %s has depth %d, width %d, '
             '%d heads' % (MODEL, cfg['depth'], cfg['embed_dim'], cfg['num_heads']))
    torch.set_num_threads(threads)
    vae, var = build_vae_var(
        device='cpu', patch_nums=tuple(cfg['patch_nums']), V=cfg['vocab_size'],
        Cvae=cfg['z_channels'], ch=cfg['vae_ch'], share_quant_resi=cfg['share_quant_resi'],
        num_classes=cfg['num_classes'], depth=cfg['depth'], shared_aln=cfg['shared_aln'],
        attn_l2_norm=cfg['attn_l2_norm'], flash_if_available=False, fused_if_available=False)
    tensors, _ = load_safetensors(MODEL)
    for prefix, module in (('var.', var), ('vae.', vae)):
        sd = {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v))
              for k, v in tensors.items() if k.startswith(prefix)}
        # nn.Module's own: VQVAE's override passes assign=, which torch 1.13 lacks, and only
        # patches ema_vocab_hit_SV, which the fixture does not hold
        missing, unexpected = torch.nn.Module.load_state_dict(module, sd, strict=False)
        # what tools/convert_var.py leaves out (buffers the reference computes, the encoder)
        drop = DROP_VAR if prefix == 'var.' else DROP_VAE
        missing = [k for k in missing if not drop.match(k)]
        if prefix == 'var.':  # the VAE inside VAR is the same module, loaded below
            missing = [k for k in missing if not k.startswith('vae_')]
        if missing or unexpected:
            fail('the fixture does not fit the reference %s: missing %s, unexpected %s'
                 % (prefix.rstrip('.'), missing[:5], unexpected[:5]))
    vae.eval()
    var.eval()
    # the weights landed where the reference reads them: it redraws the fixture's golden image
    gold, _ = load_safetensors(os.path.join(os.path.dirname(MODEL), 'golden.safetensors'))
    with torch.inference_mode():
        img = var.autoregressive_infer_cfg(B=2, label_B=torch.tensor(gold['labels'].astype('int64')),
                                           cfg=CFG, top_k=1, top_p=0.0).numpy()
    err = float(np.abs(img - gold['image']).max())
    if err > 1.0 / 255:
        fail('the reference with the fixture\'s weights does not redraw golden.safetensors\' image '
             '(max difference %.4f): the weights did not load as the fixture was made' % err)
    return torch, var, stubbed


def time_reference(torch, var, batch, seed):
    labels = torch.arange(batch) % 10
    t0 = time.perf_counter()
    with torch.inference_mode():
        var.autoregressive_infer_cfg(B=batch, label_B=labels, g_seed=seed, cfg=CFG, top_k=TOP_K,
                                     top_p=TOP_P)
    return batch / (time.perf_counter() - t0)


def time_varserve(binary, batch, threads):
    cmd = [binary, 'bench', '--model', MODEL, '--batch', str(batch), '--reps', '2', '--json',
           '--backend', 'cpu', '--threads', str(threads), '--cfg', str(CFG), '--top-k', str(TOP_K),
           '--top-p', str(TOP_P)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rec = json.loads(out.strip().splitlines()[-1])
    return rec['images_per_s'], rec.get('simd')


def same_blas(binary, args):
    """With --reference-blas varserve: before torch or OpenBLAS is loaded here, re-executes this
    script with OPENBLAS_CORETYPE set to the kernel table varserve's GEMMs run on (runtime/blas.h:
    OpenBLAS chooses its table when it loads, from that variable), so both sides and the roofline
    use the same kernels. Prints which table each side runs."""
    if args.reference_blas == 'default' or os.environ.get('OPENBLAS_CORETYPE'):
        print('OpenBLAS for the reference and the sgemm probe: %s' % (
            'OPENBLAS_CORETYPE=' + os.environ['OPENBLAS_CORETYPE']
            if os.environ.get('OPENBLAS_CORETYPE') else "OpenBLAS's own choice"))
        return
    cmd = [binary, 'bench', '--model', MODEL, '--batch', '1', '--reps', '1', '--json',
           '--backend', 'cpu', '--top-k', '1']
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    blas = json.loads(out.strip().splitlines()[-1]).get('blas', '')
    m = re.search(r', (\w+) kernels \(', blas)
    print('varserve: %s' % (blas or 'no blas field'))
    if not m:
        print('OpenBLAS for the reference and the sgemm probe: its own choice')
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv,
              dict(os.environ, OPENBLAS_CORETYPE=m.group(1)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rounds', type=int, default=3, help='alternations of the two (default 3)')
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                    help='threads for both sides (default: all cores)')
    ap.add_argument('--reference-blas', choices=['varserve', 'default'], default='varserve',
                    help="OpenBLAS kernels for the reference and the sgemm probe: 'varserve' "
                         "(default) the table varserve runs (its bench --json blas), set as "
                         "OPENBLAS_CORETYPE; 'default' OpenBLAS's own choice for this CPU")
    args = ap.parse_args()
    ref = os.environ.get('VAR_REFERENCE')
    if not ref:
        skip('set VAR_REFERENCE=DIR to a checkout of FoundationVision/VAR (its models/ and dist.py)')
    if not os.path.isfile(os.path.join(ref, 'models', 'var.py')):
        skip('VAR_REFERENCE=%s has no models/var.py: not a FoundationVision/VAR checkout' % ref)
    binary = os.environ.get('VARSERVE_BIN', os.path.join(ROOT, 'build', 'varserve'))
    if not os.access(binary, os.X_OK):
        fail('%s is not built: run make (or set VARSERVE_BIN)' % binary)
    same_blas(binary, args)
    try:
        import numpy as np
        import torch  # noqa: F401
    except ImportError as e:
        skip('%s (use /usr/bin/python3 with numpy and python3-torch)' % e)
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from var_ref import load_safetensors
    _, meta = load_safetensors(MODEL)
    cfg = json.loads(meta['config'])

    torch_mod, var, stubbed = load_reference(ref, cfg, args.threads)
    flops = transformer_flops(cfg) + decoder_flops(cfg)
    print('fixture %s: cfg %g, top_k %d, top_p %g; %d threads each; GEMM work %.2f GFLOP per image '
          '(transformer %.2f, decoder %.2f)' % (os.path.relpath(MODEL, ROOT), CFG, TOP_K, TOP_P,
                                                args.threads, flops / 1e9,
                                                transformer_flops(cfg) / 1e9, decoder_flops(cfg) / 1e9))
    if stubbed:
        print('(huggingface_hub is not installed: models/var.py imports it for VARHF only, stubbed)')
    peak = sgemm_gflops(args.threads, np)
    print('sgemm (OpenBLAS, %d threads, 2048^3): %s' % (
        args.threads, '%.1f GFLOP/s' % peak if peak else 'libopenblas not found'))

    time_varserve(binary, 1, args.threads)  # warm-ups: page cache, the reference's allocator
    time_reference(torch_mod, var, 1, 0)
    res = {b: ([], []) for b in BATCHES}
    simd = None
    for r in range(args.rounds):
        for b in BATCHES:
            v, simd = time_varserve(binary, b, args.threads)
            p = time_reference(torch_mod, var, b, r)
            res[b][0].append(v)
            res[b][1].append(p)
            print('round %d batch %d: varserve %.3f images/s, reference %.3f images/s' % (r + 1, b, v, p))
    after = sgemm_gflops(args.threads, np)
    if peak and after and after > peak:
        print('sgemm after the rounds: %.1f GFLOP/s (the roofline below uses it)' % after)
        peak = after
    print('varserve simd path: %s; load average after: %s' % (simd, ' '.join(
        '%.2f' % x for x in os.getloadavg())))
    print('| batch | varserve images/s | reference images/s | ratio | varserve roofline | reference roofline |')
    print('|---:|---:|---:|---:|---:|---:|')
    for b in BATCHES:
        v = sorted(res[b][0])[len(res[b][0]) // 2]
        p = sorted(res[b][1])[len(res[b][1]) // 2]
        roof = (lambda x: '%.0f%%' % (100 * x * flops / 1e9 / peak)) if peak else (lambda x: '-')
        print('| %d | %.3f | %.3f | %.2f× | %s | %s |' % (b, v, p, v / p, roof(v), roof(p)))
    print('(medians of %d rounds)' % args.rounds)


if __name__ == '__main__':
    main()
