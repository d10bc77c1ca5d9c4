#!/usr/bin/env python3
"""FusedNorm's CUDA kernels against PyTorch eager and torch.compile, same shapes and dtype, one process.

Loads the C ABI library (bench/cuda/fusednorm_cuda_c.cpp) with ctypes and passes torch tensors' data_ptr() and
torch.cuda.current_stream().cuda_stream. For each case: checks FusedNorm's outputs against float64 torch first,
then times FusedNorm, eager and compiled PyTorch with CUDA events (median after warm-up; inputs rotated when
they fit in L2), and the copy ceiling (a large device-to-device copy) in the same run. Prints a table of ms,
effective GB/s (the fewest bytes the op must move: each input read once, each output written once) and ratios;
writes JSON to --out (default $OUT).

python3 scripts/gpu_bench.py --dry-run lists the cases without torch (what can be checked on a machine without
a GPU).
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
import zlib

RESNET50_BATCH256 = [  # (name, (N, C, H, W)), docs/PERFORMANCE.md and issue 7
    ("resnet50.conv1", (256, 64, 112, 112)),
    ("resnet50.stage1", (256, 256, 56, 56)),
    ("resnet50.stage2", (256, 512, 28, 28)),
    ("resnet50.stage3", (256, 1024, 14, 14)),
    ("resnet50.stage4", (256, 2048, 7, 7)),
]
ROWS = [("transformer.8192x1024", (8192, 1024)), ("transformer.8192x4096", (8192, 4096))]
GROUPS = [("unet.n8_c320_64x64_g32", (8, 320, 64, 64), 32)]
EPILOGUES = {"none": 0, "relu": 1, "add_relu": 2}
TOLERANCE = 1e-5  # float32 storage against the float64 reference (docs/CUDA.md)
HOST_OVERHEAD = {}  # host_overhead()'s result, written with the JSON


def cases(quick):
    """(kind, name, shape, extra) in the order they run; compile only where it says so (compile time counts)."""
    bn_shapes = RESNET50_BATCH256[:2] if quick else RESNET50_BATCH256
    out = []
    for name, shape in bn_shapes:
        out.append(("bn_forward_training", name, shape, {"epilogue": "none", "compile": True}))
    for name, shape in bn_shapes:
        out.append(("bn_forward_training", name, shape, {"epilogue": "relu", "compile": True}))
    for name, shape in bn_shapes:
        out.append(("bn_forward_inference", name, shape, {"epilogue": "none", "compile": False}))
    for name, shape in bn_shapes:
        out.append(("bn_backward", name, shape, {"epilogue": "none", "compile": False}))
    out.append(("bn_forward_training", bn_shapes[1][0] + ".nhwc", bn_shapes[1][1],
                {"epilogue": "none", "compile": False, "nhwc": True}))
    for name, shape in ROWS[: 1 if quick else 2]:
        out.append(("layer_norm_forward", name, shape, {"compile": True}))
        out.append(("layer_norm_backward", name, shape, {"compile": False}))
        out.append(("rms_norm_forward", name, shape, {"compile": True}))
    for name, shape, groups in GROUPS:
        out.append(("group_norm_forward", name, shape, {"groups": groups, "compile": True}))
        out.append(("group_norm_backward", name, shape, {"groups": groups, "compile": False}))
    return out


def effective_bytes(kind, shape, extra):
    n = math.prod(shape) * 4
    if kind.endswith("backward"):
        return 3 * n  # x, dy read; dx written
    if extra.get("epilogue") == "add_relu":
        return 3 * n
    return 2 * n  # x read, y written


class Library:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        p, i64, i32, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
        self.lib.fusednorm_cuda_available.argtypes = [ctypes.c_char_p, i32]
        self.lib.fusednorm_cuda_batch_norm_forward.argtypes = [p] * 9 + [p, i32, i32, i32, i32, d, d, p, p, i32]
        self.lib.fusednorm_cuda_batch_norm_backward.argtypes = [p] * 10 + [p, i32, i32, i32, p, p, i32]
        self.lib.fusednorm_cuda_group_norm_forward.argtypes = [p] * 6 + [p, i32, i32, i64, d, p, p, i32]
        self.lib.fusednorm_cuda_group_norm_backward.argtypes = [p] * 8 + [p, i32, i32, i64, p, p, i32]
        self.lib.fusednorm_cuda_rows_norm_forward.argtypes = [i32] + [p] * 6 + [i64, i64, d, p, p, i32]
        self.lib.fusednorm_cuda_rows_norm_backward.argtypes = [i32] + [p] * 8 + [i64, i64, p, p, i32]
        self.error = ctypes.create_string_buffer(4096)

    def available(self):
        ok = self.lib.fusednorm_cuda_available(self.error, len(self.error))
        return bool(ok), self.error.value.decode()

    def call(self, name, *args):
        rc = getattr(self.lib, name)(*args, self.error, len(self.error))
        if rc != 0:
            raise RuntimeError(f"{name}: {self.error.value.decode()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default=os.path.join(os.path.dirname(__file__), "..", "build", "gpu-bundle",
                                                      "libfusednorm_cuda_c.so"))
    parser.add_argument("--out", default=os.environ.get("OUT", "out"), help="folder for gpu_bench.json")
    parser.add_argument("--quick", action="store_true", help="two ResNet shapes, one row shape")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its warm-ups take minutes)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later compiles are skipped past it")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--profile", action="store_true",
                        help="per case, FusedNorm's kernels and their times (torch.profiler, CUPTI)")
    parser.add_argument("--dry-run", action="store_true", help="list the cases and bytes; needs no torch or GPU")
    args = parser.parse_args()

    plan = cases(args.quick)
    if args.dry_run:
        for kind, name, shape, extra in plan:
            print(f"{kind:22} {name:28} {str(shape):24} {effective_bytes(kind, shape, extra) / 1e6:9.1f} MB {extra}")
        print(f"{len(plan)} cases; library {os.path.abspath(args.lib)}")
        return 0
    return run(args, plan)


def run(args, plan):
    import torch
    import torch.nn.functional as F

    started = time.time()
    lib = Library(args.lib)
    ok, reason = lib.available()
    if not ok:
        print(f"FusedNorm CUDA not available: {reason}", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = False
    props = torch.cuda.get_device_properties(dev)
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2**20)
    stream = lambda: ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr()) if t is not None else None

    def time_ms(fn, sets=1, reps=args.reps, warmup=3):
        for i in range(warmup):
            fn(i % sets)
        torch.cuda.synchronize()
        times = []
        for i in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i % sets)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def rel_error(got, ref):
        got, ref = got.double(), ref.double()
        if not torch.isfinite(got).all():
            return float("inf")
        return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()

    # The copy ceiling: read + write bytes of a 1 GiB device-to-device copy, same run.
    def copy_ceiling():
        src = torch.randn(2**28, device=dev)
        dst = torch.empty_like(src)
        return 2 * src.numel() * 4 / time_ms(lambda i: dst.copy_(src)) / 1e6

    copy_gbs = copy_ceiling()
    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2_bytes / 2**20:.0f} MiB; "
          f"torch {torch.__version__}; copy ceiling {copy_gbs:.0f} GB/s", flush=True)

    global HOST_OVERHEAD
    overhead = HOST_OVERHEAD = host_overhead(torch, F, lib, dev, stream, ptr)
    print(f"host time per call on tiny tensors (GPU work negligible, {overhead['calls']} calls queued, then one "
          f"synchronize): " + ", ".join(f"{k} {v:.1f} us" for k, v in overhead.items() if k != "calls"), flush=True)

    results = []
    for kind, name, shape, extra in plan:
        try:
            row = bench_case(torch, F, lib, kind, name, shape, extra, dev, stream, ptr, time_ms, rel_error,
                             l2_bytes, args, started)
        except Exception as e:  # one failing case must not hide the others' numbers
            row = {"kind": kind, "name": name, "shape": list(shape), "error": str(e)[:500]}
        row["epilogue"] = extra.get("epilogue", "none")
        if "ms" in row:
            row["gbs"] = row["bytes"] / row["ms"] / 1e6
            row["of_copy"] = row["gbs"] / copy_gbs
        results.append(row)
        print_row(row, flush=True)
        write_json(args.out, props, torch, copy_gbs, results)  # after every row: a run cut short keeps its rows
        torch.cuda.empty_cache()

    print()
    print_table(results, copy_gbs)
    path = write_json(args.out, props, torch, copy_gbs, results)
    print(f"wrote {path}; {time.time() - started:.0f} s")
    failed = [r for r in results if r.get("error") or not r.get("correct", True)]
    return 1 if failed else 0


def host_overhead(torch, F, lib, dev, stream, ptr, calls=300):
    """Wall microseconds per call when the GPU has almost nothing to do: what a call costs the host (validation,
    launches, the driver), FusedNorm beside PyTorch eager on the same tiny tensors."""
    x = torch.randn(8, 16, 4, 4, device=dev)
    y, w, b = torch.empty_like(x), torch.ones(16, device=dev), torch.zeros(16, device=dev)
    rm, rv, mean, invstd = (torch.zeros(16, device=dev) for _ in range(4))
    sh = (ctypes.c_int64 * 4)(*x.shape)
    rows = torch.randn(64, 64, device=dev)
    ry, rw, rb, rmean, rinv = torch.empty_like(rows), torch.ones(64, device=dev), torch.zeros(64, device=dev), \
        torch.empty(64, device=dev), torch.empty(64, device=dev)
    fns = {
        "batch_norm training ours": lambda: lib.call(
            "fusednorm_cuda_batch_norm_forward", ptr(x), ptr(y), None, ptr(w), ptr(b), ptr(rm), ptr(rv), ptr(mean),
            ptr(invstd), sh, 4, 0, 0, 1, 1e-5, 0.1, stream()),
        "batch_norm training eager": lambda: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5),
        "layer_norm ours": lambda: lib.call("fusednorm_cuda_rows_norm_forward", 0, ptr(rows), ptr(ry), ptr(rw), ptr(rb),
                                            ptr(rmean), ptr(rinv), 64, 64, 1e-5, stream()),
        "layer_norm eager": lambda: F.layer_norm(rows, (64,), rw, rb, eps=1e-5),
    }
    result = {"calls": calls}
    for name, fn in fns.items():
        try:  # a failing call is the cases' to report, with its shape; here it only loses its figure
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            result[name] = (time.perf_counter() - start) / calls * 1e6
        except Exception as e:
            result[name] = float("nan")
            print(f"host_overhead: {name}: {e}", file=sys.stderr)
    return result


def write_json(out, props, torch, copy_gbs, results):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "gpu_bench.json")
    with open(path, "w") as f:
        json.dump({"device": props.name, "torch": torch.__version__, "copy_gbs": copy_gbs,
                   "cudnn": torch.backends.cudnn.version(), "host_overhead_us": HOST_OVERHEAD, "results": results},
                  f, indent=1)
    return path


def bench_case(torch, F, lib, kind, name, shape, extra, dev, stream, ptr, time_ms, rel_error, l2_bytes, args,
               started):
    nhwc = extra.get("nhwc", False)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    nbytes = math.prod(shape) * 4
    sets = max(1, min(4, math.ceil(2 * l2_bytes / nbytes)))  # rotate when a set would stay in L2
    gen = torch.Generator(device=dev).manual_seed(zlib.crc32((name + kind).encode()))
    rand = lambda *s: torch.randn(*s, device=dev, generator=gen)
    row = {"kind": kind, "name": name, "shape": list(shape), "bytes": effective_bytes(kind, shape, extra)}

    def profile(fn):
        """FusedNorm's kernels in one call: name, microseconds (mean of 3 calls), launches per call."""
        if not args.profile:
            return
        from torch.profiler import profile as torch_profile, ProfilerActivity
        fn(0)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn(0)
            torch.cuda.synchronize()
        kernels = [(e.key, e.device_time_total / 3, e.count // 3) for e in prof.key_averages()
                   if e.device_time_total > 0]
        row["kernels"] = sorted(kernels, key=lambda k: -k[1])[:16]
    compile_ok = extra.get("compile") and not args.no_compile and time.time() - started < args.budget

    def time_compiled(fn, inputs):
        """torch.compile's time (its first call compiles); a compile failure is noted, not fatal to the row."""
        try:
            compiled = torch.compile(fn, dynamic=False)
            row["compile_ms"] = time_ms(lambda i: compiled(inputs[i]), len(inputs))
        except Exception as e:
            row["compile_error"] = str(e)[:300]

    if kind.startswith("bn_"):
        C = shape[1]
        xs = [(rand(*shape) * 2 + 0.5).contiguous(memory_format=fmt) for _ in range(sets)]
        w, b = rand(C).abs() + 0.5, rand(C)
        rm, rv = rand(C), rand(C).abs() + 0.5
        epilogue = extra.get("epilogue", "none")
        act = (lambda t: F.relu(t)) if epilogue == "relu" else (lambda t: t)
        y = torch.empty_like(xs[0])
        mean, invstd = torch.empty(C, device=dev), torch.empty(C, device=dev)
        sh = (ctypes.c_int64 * len(shape))(*shape)
        ep = EPILOGUES[epilogue]

        def ours_fwd(i, training=1, rm_=rm, rv_=rv):
            lib.call("fusednorm_cuda_batch_norm_forward", ptr(xs[i]), ptr(y), None, ptr(w), ptr(b), ptr(rm_),
                     ptr(rv_), ptr(mean), ptr(invstd), sh, len(shape), int(nhwc), ep, training, 1e-5, 0.1,
                     stream())

        if kind == "bn_forward_training":
            rm_ref, rv_ref = rm.clone(), rv.clone()
            ours_fwd(0, rm_=rm.clone(), rv_=rv.clone())
            ref = act(F.batch_norm(xs[0].double(), rm_ref.double(), rv_ref.double(), w.double(), b.double(),
                                   training=True, momentum=0.1, eps=1e-5))
            row["error"] = None
            row["rel_error"] = rel_error(y, ref)
            eager = lambda i: act(F.batch_norm(xs[i], rm, rv, w, b, training=True, momentum=0.1, eps=1e-5))
            row["ms"] = time_ms(ours_fwd, sets)
            profile(ours_fwd)
            row["eager_ms"] = time_ms(eager, sets)
            if compile_ok:
                time_compiled(lambda x: act(F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)),
                              xs)
        elif kind == "bn_forward_inference":
            ours_fwd(0, training=0)
            ref = F.batch_norm(xs[0].double(), rm.double(), rv.double(), w.double(), b.double(), training=False,
                               eps=1e-5)
            row["rel_error"] = rel_error(y, ref)
            row["ms"] = time_ms(lambda i: ours_fwd(i, training=0), sets)
            profile(lambda i: ours_fwd(i, training=0))
            row["eager_ms"] = time_ms(lambda i: F.batch_norm(xs[i], rm, rv, w, b, training=False, eps=1e-5), sets)
        else:  # bn_backward, training statistics
            x = xs[0]
            dy = rand(*shape).contiguous(memory_format=fmt)
            ours_fwd(0, rm_=rm.clone(), rv_=rv.clone())
            dx, dw, db = torch.empty_like(x), torch.empty(C, device=dev), torch.empty(C, device=dev)
            ours_bwd = lambda i: lib.call("fusednorm_cuda_batch_norm_backward", ptr(dy), ptr(x), ptr(dx), ptr(w),
                                          ptr(mean), ptr(invstd), ptr(dw), ptr(db), None, None, sh, len(shape),
                                          int(nhwc), ep, stream())
            ours_bwd(0)
            xd = x.double().requires_grad_()
            wd, bd = w.double().requires_grad_(), b.double().requires_grad_()
            yd = F.batch_norm(xd, None, None, wd, bd, training=True, eps=1e-5)
            gx, gw, gb = torch.autograd.grad(yd, (xd, wd, bd), dy.double())
            row["rel_error"] = max(rel_error(dx, gx), rel_error(dw, gw), rel_error(db, gb))
            row["ms"] = time_ms(ours_bwd)
            profile(ours_bwd)
            xe = x.clone().requires_grad_()
            we, be = w.clone().requires_grad_(), b.clone().requires_grad_()
            ye = F.batch_norm(xe, rm.clone(), rv.clone(), we, be, training=True, momentum=0.1, eps=1e-5)
            row["eager_ms"] = time_ms(lambda i: torch.autograd.grad(ye, (xe, we, be), dy, retain_graph=True))
    elif kind in ("layer_norm_forward", "layer_norm_backward", "rms_norm_forward"):
        R, D = shape
        rms = kind.startswith("rms")
        xs = [rand(R, D) * 2 + 0.5 for _ in range(sets)]
        w, b = rand(D).abs() + 0.5, rand(D)
        y, mean, invstd = torch.empty(R, D, device=dev), torch.empty(R, device=dev), torch.empty(R, device=dev)
        ours_fwd = lambda i: lib.call("fusednorm_cuda_rows_norm_forward", int(rms), ptr(xs[i]), ptr(y), ptr(w),
                                      ptr(b), ptr(mean), ptr(invstd), R, D, 1e-5, stream())
        torch_fwd = ((lambda x: F.rms_norm(x, (D,), w, eps=1e-5)) if rms
                     else (lambda x: F.layer_norm(x, (D,), w, b, eps=1e-5)))
        ours_fwd(0)
        if kind.endswith("forward"):
            ref = (F.rms_norm(xs[0].double(), (D,), w.double(), eps=1e-5) if rms
                   else F.layer_norm(xs[0].double(), (D,), w.double(), b.double(), eps=1e-5))
            row["rel_error"] = rel_error(y, ref)
            row["ms"] = time_ms(ours_fwd, sets)
            profile(ours_fwd)
            row["eager_ms"] = time_ms(lambda i: torch_fwd(xs[i]), sets)
            if compile_ok:
                time_compiled(torch_fwd, xs)
        else:
            x = xs[0]
            dy = rand(R, D)
            dx, dw, db = torch.empty_like(x), torch.empty(D, device=dev), torch.empty(D, device=dev)
            ours_bwd = lambda i: lib.call("fusednorm_cuda_rows_norm_backward", 0, ptr(dy), ptr(x), ptr(dx), ptr(w),
                                          ptr(mean), ptr(invstd), ptr(dw), ptr(db), R, D, stream())
            ours_bwd(0)
            xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
            gx, gw, gb = torch.autograd.grad(F.layer_norm(xd, (D,), wd, bd, eps=1e-5), (xd, wd, bd), dy.double())
            row["rel_error"] = max(rel_error(dx, gx), rel_error(dw, gw), rel_error(db, gb))
            row["ms"] = time_ms(ours_bwd, sets)
            profile(ours_bwd)
            xe, we, be = (t.clone().requires_grad_() for t in (x, w, b))
            ye = F.layer_norm(xe, (D,), we, be, eps=1e-5)
            row["eager_ms"] = time_ms(lambda i: torch.autograd.grad(ye, (xe, we, be), dy, retain_graph=True))
    else:  # group norm
        G = extra["groups"]
        N, C = shape[0], shape[1]
        xs = [(rand(*shape) * 2 + 0.5).contiguous(memory_format=fmt) for _ in range(sets)]
        w, b = rand(C).abs() + 0.5, rand(C)
        y, mean, invstd = torch.empty_like(xs[0]), torch.empty(N * G, device=dev), torch.empty(N * G, device=dev)
        sh = (ctypes.c_int64 * len(shape))(*shape)
        ours_fwd = lambda i: lib.call("fusednorm_cuda_group_norm_forward", ptr(xs[i]), ptr(y), ptr(w), ptr(b),
                                      ptr(mean), ptr(invstd), sh, len(shape), int(nhwc), G, 1e-5, stream())
        ours_fwd(0)
        if kind == "group_norm_forward":
            ref = F.group_norm(xs[0].double(), G, w.double(), b.double(), eps=1e-5)
            row["rel_error"] = rel_error(y, ref)
            row["ms"] = time_ms(ours_fwd, sets)
            profile(ours_fwd)
            torch_fwd = lambda x: F.group_norm(x, G, w, b, eps=1e-5)
            row["eager_ms"] = time_ms(lambda i: torch_fwd(xs[i]), sets)
            if compile_ok:
                time_compiled(torch_fwd, xs)
        else:
            x = xs[0]
            dy = rand(*shape).contiguous(memory_format=fmt)
            dx, dw, db = torch.empty_like(x), torch.empty(C, device=dev), torch.empty(C, device=dev)
            ours_bwd = lambda i: lib.call("fusednorm_cuda_group_norm_backward", ptr(dy), ptr(x), ptr(dx), ptr(w),
                                          ptr(mean), ptr(invstd), ptr(dw), ptr(db), sh, len(shape), int(nhwc), G,
                                          stream())
            ours_bwd(0)
            xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
            gx, gw, gb = torch.autograd.grad(F.group_norm(xd, G, wd, bd, eps=1e-5), (xd, wd, bd), dy.double())
            row["rel_error"] = max(rel_error(dx, gx), rel_error(dw, gw), rel_error(db, gb))
            row["ms"] = time_ms(ours_bwd)
            profile(ours_bwd)
            xe, we, be = (t.clone().requires_grad_() for t in (x, w, b))
            ye = F.group_norm(xe, G, we, be, eps=1e-5)
            row["eager_ms"] = time_ms(lambda i: torch.autograd.grad(ye, (xe, we, be), dy, retain_graph=True))
    row["correct"] = row.get("rel_error", 1.0) <= TOLERANCE
    row.pop("error", None)
    return row


def print_row(row, flush=False):
    if "ms" not in row:
        print(f"{row['kind']:22} {row['name']:28} ERROR {row.get('error')}", flush=flush)
        return
    print(f"{row['kind']:22} {row['name']:28} {row['epilogue']:8} ours {row['ms']:8.3f} ms "
          f"{row['gbs']:6.0f} GB/s  err {row['rel_error']:.1e}{'' if row['correct'] else ' FAIL'}"
          + (f"  eager {row['eager_ms']:.3f} ms (x{row['eager_ms'] / row['ms']:.2f})" if "eager_ms" in row else "")
          + (f"  compile {row['compile_ms']:.3f} ms (x{row['compile_ms'] / row['ms']:.2f})" if "compile_ms" in row
             else "") + (f"  compile error {row['compile_error'][:80]}" if "compile_error" in row else ""),
          flush=flush)
    for name, us, count in row.get("kernels", []):
        print(f"    {us:9.1f} us x{count:<3} {name[:100]}", flush=flush)


def print_table(results, copy_gbs):
    head = ("| op | shape | epilogue | FusedNorm ms | GB/s | of copy | eager ms | x eager | compile ms | x compile |"
            " rel. error |")
    print(f"copy ceiling (1 GiB device-to-device, read + write): {copy_gbs:.0f} GB/s")
    print(head)
    print("|" + "---|" * 11)
    for r in results:
        if "ms" not in r:
            print(f"| {r['kind']} | {r['name']} | {r['epilogue']} | error: {r.get('error')} |")
            continue
        eager = f"{r['eager_ms']:.3f} | {r['eager_ms'] / r['ms']:.2f}" if "eager_ms" in r else "- | -"
        comp = f"{r['compile_ms']:.3f} | {r['compile_ms'] / r['ms']:.2f}" if "compile_ms" in r else "- | -"
        print(f"| {r['kind']} | {r['name']} {tuple(r['shape'])} | {r['epilogue']} | {r['ms']:.3f} | {r['gbs']:.0f} |"
              f" {r['of_copy']:.2f} | {eager} | {comp} | {r['rel_error']:.1e}{'' if r['correct'] else ' FAIL'} |")


if __name__ == "__main__":
    sys.exit(main())
