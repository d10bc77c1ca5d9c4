#!/usr/bin/env python3
"""Runs the single-read BatchNorm2d probe (bench/cuda/single_read_probe.cu) against PyTorch on a GPU.

For each ResNet-50 batch-256 BatchNorm shape (NCHW float32): the forward with ReLU on and off, and the backward,
  1. checks every compiled variant of the probe (as the library lists them: "E32" = classic, E elements per
     thread; "pE16" = pipelined, the next item's loads in flight during the wait; "pdE16" = pipelined, every
     block combines the channel's partials itself) against a float64 PyTorch reference (relative error
     max|got-ref| / max|ref| <= 1e-5 for every output, spin-timeout flag clear),
  2. times each correct variant, PyTorch eager and torch.compile(dynamic=False) with CUDA events (median of 20
     after 3 warm-ups, inputs rotated over copies so that they do not sit in L2), beside a 1 GiB copy ceiling;
     the best correct variant is the case's result,
  3. times the DIAGNOSTIC "nosync" variants (timing only, WRONG RESULTS: no cross-block wait, each block uses its
     own part's statistics), printed only as "upper bound without the barrier": never checked, never a result.
Phase 1 (probe + eager, every case) runs first, phase 2 (torch.compile, slow to compile) while --budget allows.
A line is printed per case as soon as it is measured, and --out/gpu_probe.json is rewritten after each.
Exit status 1 when any probe result is wrong or the probe failed (a shape too large for the probe is skipped).

  python3 scripts/gpu_probe.py --lib build/gpu-bundle/libsingle_read_probe.so --out $OUT
  python3 scripts/gpu_probe.py --dry-run            # no torch, no GPU: lists the cases (and loads --lib if given)
"""
import argparse
import ctypes
import faulthandler
import json
import math
import os
import statistics
import sys
import time

SHAPES = [(256, 64, 112, 112), (256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7)]
EPS = 1e-5
MOMENTUM = 0.1
TOLERANCE = 1e-5
START = time.monotonic()


def elapsed():
    return time.monotonic() - START


def log(text):
    print(text, flush=True)


def make_cases(backward):
    cases = []
    for shape in SHAPES:
        for relu in (1, 0):
            cases.append({"pass": "forward", "shape": list(shape), "relu": relu})
        if backward:
            cases.append({"pass": "backward", "shape": list(shape), "relu": 0})
    for case in cases:
        n, c, h, w = case["shape"]
        kind = "bwd" if case["pass"] == "backward" else f"fwd relu={case['relu']}"
        case["name"] = f"{kind} ({n},{c},{h},{w})"
    return cases


class ProbeError(Exception):
    pass


class Probe:
    """ctypes over the probe's C ABI. Every call returns 0, or nonzero with a message in the error buffer."""

    def __init__(self, path):
        self.lib = lib = ctypes.CDLL(os.path.abspath(path))
        P, LL, I, D, CP = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
        lib.probe_bn_forward.argtypes = [P] * 8 + [LL] * 3 + [I, D, D, P, CP, I]
        lib.probe_bn_forward.restype = I
        lib.probe_bn_backward.argtypes = [P] * 8 + [LL] * 3 + [P, CP, I]
        lib.probe_bn_backward.restype = I
        lib.probe_last_error.argtypes = [CP, I]
        lib.probe_last_error.restype = I
        lib.probe_set_variant.argtypes = [CP]
        lib.probe_set_variant.restype = I
        lib.probe_variants.argtypes = [CP, I]
        lib.probe_variants.restype = I
        lib.probe_set_timeout_ms.argtypes = [I]
        lib.probe_set_timeout_ms.restype = None
        lib.probe_plan.argtypes = [I, LL, LL, LL, ctypes.POINTER(LL), CP, I]
        lib.probe_plan.restype = I
        lib.probe_info.argtypes = [LL, LL, LL, CP, I]
        lib.probe_info.restype = I
        self.error = ctypes.create_string_buffer(2048)

    def message(self):
        return self.error.value.decode(errors="replace")

    def info(self, shape=(0, 0, 0)):
        out = ctypes.create_string_buffer(8192)
        rc = self.lib.probe_info(*shape, out, len(out))
        return rc, out.value.decode(errors="replace")

    def variants(self):
        """The compiled variants: [{"pass", "name", "E", "kind", "min_blocks"}] (needs no GPU)."""
        out = ctypes.create_string_buffer(8192)
        if self.lib.probe_variants(out, len(out)) != 0:
            raise ProbeError("probe_variants: buffer too small")
        return parse_variants(out.value.decode())

    def plan(self, backward, n, c, s, name):
        """(E, grid, blocks/SM, P, registers, local bytes), or raises ProbeError (e.g. the shape does not fit)."""
        self.set_variant(name)
        out = (ctypes.c_longlong * 6)()
        rc = self.lib.probe_plan(int(backward), n, c, s, out, self.error, len(self.error))
        self.lib.probe_set_variant(None)
        if rc != 0:
            raise ProbeError(self.message())
        return tuple(int(v) for v in out)

    def set_variant(self, name):
        """Forces the variant `name` ("E32", "pE16", ...); None restores the automatic choice."""
        if self.lib.probe_set_variant(name.encode() if name else None) != 0:
            raise ProbeError(f"variant {name} is not compiled")

    def check(self, what):
        """Synchronizes; raises ProbeError on a CUDA error or a spin timeout since the last check."""
        if self.lib.probe_last_error(self.error, len(self.error)) != 0:
            raise ProbeError(f"{what}: {self.message()}")


# What probe_variants returns for the current single_read_probe.cu (g_variants): "pass name E kind min-blocks/SM".
# Used only by --dry-run without a library; a real run asks the library.
DEFAULT_VARIANTS = """
forward E8 8 classic 3
forward E14 14 classic 3
forward E24 24 classic 2
forward E32 32 classic 2
forward pE16 16 pipelined 2
forward pE48 48 pipelined 1
forward pdE16 16 pipelined_direct 2
forward pdE18 18 pipelined_direct 2
forward pdE48 48 pipelined_direct 1
forward nosyncE16 16 nosync 2
forward nosyncE48 48 nosync 1
backward E6 6 classic 3
backward E12 12 classic 2
"""


def parse_variants(text):
    variants = []
    for line in text.strip().splitlines():
        pass_, name, elems, kind, min_blocks = line.split()
        variants.append({"pass": pass_, "name": name, "E": int(elems), "kind": kind, "min_blocks": int(min_blocks),
                         "diagnostic": kind == "nosync"})
    return variants


def dry_run(args):
    log(f"gpu_probe dry run: {len(make_cases(not args.no_backward))} cases, tolerance {TOLERANCE}, eps {EPS}, "
        f"momentum {MOMENTUM}, {args.warmup} warm-ups + {args.iters} timed runs")
    variants = parse_variants(DEFAULT_VARIANTS)
    if args.lib:
        probe = Probe(args.lib)  # checks that the library loads and has every symbol
        variants = probe.variants()
        log(f"library {args.lib} loads; its variants: " +
            ", ".join(f"{v['pass'][0]}:{v['name']}" + (" (DIAGNOSTIC)" if v["diagnostic"] else "") for v in variants))
        if variants != parse_variants(DEFAULT_VARIANTS):
            log("note: the library's variants differ from DEFAULT_VARIANTS in gpu_probe.py (only --dry-run uses it)")
        rc, text = probe.info()
        log(f"probe_info returned {rc}: {text.strip()}")
    for case in make_cases(not args.no_backward):
        n, c, h, w = case["shape"]
        backward = case["pass"] == "backward"
        # The probe's plan on an H200 (132 SMs; the launch bounds' blocks of 512 threads per SM), as
        # single_read_probe.cu's choose_plan computes it from the occupancy the device reports.
        plans = []
        for v in variants:
            if v["pass"] != case["pass"]:
                continue
            resident = 132 * v["min_blocks"]
            parts = -(-(n * h * w) // (v["E"] * 512))
            rounds = -(-(c * parts) // resident)
            plans.append(f"{v['name']}: P={parts}" +
                         (f" {rounds} rounds" if parts <= resident else f" > {resident} blocks, skipped"))
        log(f"  {case['name']}: x {n * c * h * w * 4 / 1e6:.0f} MB, M = N*H*W = {n * h * w}; " + ", ".join(plans))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default="build/gpu-bundle/libsingle_read_probe.so")
    parser.add_argument("--out", default=None, help="folder for gpu_probe.json")
    parser.add_argument("--dry-run", action="store_true", help="list the cases; needs neither torch nor a GPU")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--budget", type=float, default=50.0,
                        help="seconds since start after which no torch.compile is started")
    parser.add_argument("--watchdog", type=float, default=82.0,
                        help="seconds after which the process dumps its stack and exits (a hang cannot outlive it)")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="the probe's spin timeout")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if args.dry_run:
        if args.lib and not os.path.exists(args.lib):
            args.lib = None
        return dry_run(args)
    faulthandler.dump_traceback_later(args.watchdog, exit=True)
    # Inductor's compile worker pool takes seconds to start; a few kernels compile faster in-process.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    try:
        return run(args)
    finally:
        faulthandler.cancel_dump_traceback_later()


def run(args):
    import torch
    import torch.nn.functional as F

    results = {"cases": [], "tolerance": TOLERANCE, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    out_path = os.path.join(args.out, "gpu_probe.json") if args.out else None

    def save():
        results["elapsed_s"] = round(elapsed(), 2)
        if out_path:
            os.makedirs(args.out, exist_ok=True)
            with open(out_path + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(out_path + ".tmp", out_path)

    if not torch.cuda.is_available():
        log("FAIL: torch sees no CUDA device")
        return 1
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 0) or 60 * 2**20
    results["device"] = {"name": props.name, "sms": props.multi_processor_count, "l2_bytes": l2,
                         "torch": torch.__version__, "cuda": torch.version.cuda}
    log(f"device {props.name}, {props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB, torch {torch.__version__}")
    try:
        import torch._dynamo
        for name in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
    except Exception as e:  # noqa: BLE001 - compile is optional
        log(f"note: torch._dynamo config: {e}")

    torch.cuda.init()
    probe = Probe(args.lib)
    probe.lib.probe_set_timeout_ms(args.timeout_ms)
    variants = probe.variants()
    results["variants"] = variants
    rc, info = probe.info()
    log(info.rstrip())
    results["probe_info"] = info
    if rc != 0:
        log(f"FAIL: probe_info: {info}")
        save()
        return 1
    stream = torch.cuda.current_stream().cuda_stream

    def bench(fn, sets):
        """Median ms of fn(set) over args.iters runs after args.warmup, the GPU queue pre-filled with a sleep so
        that the host's launch overhead is not timed."""
        for i in range(args.warmup):
            fn(i % sets)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters)]
        try:
            torch.cuda._sleep(20_000_000)  # ~10 ms at ~2 GHz
        except Exception:  # noqa: BLE001 - only a refinement
            pass
        for i in range(args.iters):
            starts[i].record()
            fn((args.warmup + i) % sets)
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))

    def rel_error(got, ref):
        """max|got-ref| / max|ref| in float64; NaN anywhere gives NaN (which fails)."""
        diff = (got.double() - ref).abs().max().item()
        scale = ref.abs().max().item()
        if math.isnan(diff) or math.isnan(scale):
            return float("nan")
        return diff / scale if scale > 0 else diff

    # The copy ceiling: read + write bytes of a 1 GiB device-to-device copy.
    src = torch.empty(2**28, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    copy_ms = bench(lambda i: dst.copy_(src), 1)
    copy_gbps = 2 * src.numel() * 4 / (copy_ms * 1e-3) / 1e9
    del src, dst
    torch.cuda.empty_cache()
    results["copy_gbps"] = copy_gbps
    log(f"copy ceiling: {copy_gbps:.0f} GB/s (1 GiB copy, {copy_ms:.3f} ms)")
    save()

    failures = []
    state = {"timeouts": 0}
    for case in make_cases(not args.no_backward):
        results["cases"].append(case)
        case["errors"] = []
        case["variants"] = []
        if elapsed() > args.watchdog - 12:
            case["errors"].append("skipped: out of time")
            log(f"{case['name']}: SKIPPED (out of time)")
            save()
            continue
        try:
            run_case(case, args, probe, variants, state, failures, bench, rel_error, copy_gbps, l2, stream, torch, F,
                     device)
        except Exception as e:  # noqa: BLE001 - report, and go on unless CUDA itself is broken
            text = f"{type(e).__name__}: {e}"
            case["errors"].append(text)
            failures.append(f"{case['name']}: {text}")
            log(f"FAIL: {case['name']}: {text}")
            try:
                torch.cuda.synchronize()
            except Exception as e2:  # noqa: BLE001
                log(f"FAIL: the CUDA context is broken ({e2}); stopping")
                results["aborted"] = str(e2)
                save()
                break
        torch.cuda.empty_cache()  # the case's tensors died with run_case
        save()

    if not args.no_compile and "aborted" not in results:
        compile_phase(args, results, save, bench, copy_gbps, torch, F, device)

    results["failures"] = failures
    save()
    log(f"done in {elapsed():.1f} s" + (f" -> {out_path}" if out_path else ""))
    if failures:
        log(f"FAIL: {len(failures)} probe failure(s):")
        for f in failures:
            log(f"  {f}")
        return 1
    log("OK: every probe result within tolerance")
    return 0


def run_case(case, args, probe, variants, state, failures, bench, rel_error, copy_gbps, l2, stream, torch, F,
             device):
    """Phase 1 for one case: every probe variant checked and timed, the diagnostic ones only timed, then eager
    PyTorch; prints the case's line."""
    n, c, h, w = case["shape"]
    s = h * w
    backward = case["pass"] == "backward"
    relu = case["relu"]
    bytes_x = n * c * s * 4
    case["bytes_moved"] = (3 if backward else 2) * bytes_x  # relu does not change it
    sets = max(1, min(4, math.ceil(2 * l2 / bytes_x)))
    case["sets"] = sets
    case["variants"] = []
    case["diagnostics"] = []

    g = torch.Generator(device=device).manual_seed(1234)
    # Per-channel offsets of a few standard deviations exercise the shifted sums.
    shift = (torch.randn(c, device=device, generator=g) * 3)[None, :, None, None]
    xs = [torch.randn(n, c, h, w, device=device, generator=g) * 2 + shift]
    xs += [xs[0].clone() for _ in range(sets - 1)]
    weight = torch.rand(c, device=device, generator=g) + 0.5
    bias = torch.randn(c, device=device, generator=g) * 0.1
    rm0 = torch.randn(c, device=device, generator=g) * 0.1
    rv0 = torch.rand(c, device=device, generator=g) + 0.5
    dys = save_mean = save_invstd = None
    if backward:
        dys = [torch.randn(n, c, h, w, device=device, generator=g)]
        dys += [dys[0].clone() for _ in range(sets - 1)]
        _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
            xs[0], weight, bias, None, None, True, MOMENTUM, EPS)
        ref = torch.ops.aten.native_batch_norm_backward(
            dys[0].double(), xs[0].double(), weight.double(), None, None, save_mean.double(), save_invstd.double(),
            True, EPS, [True, True, True])
        refs = {"dx": ref[0], "dweight": ref[1], "dbias": ref[2]}
        del ref
    else:
        rmd, rvd = rm0.double(), rv0.double()
        yd, smd, sid = torch.ops.aten.native_batch_norm(
            xs[0].double(), weight.double(), bias.double(), rmd, rvd, True, MOMENTUM, EPS)
        if relu:
            yd.relu_()
        refs = {"y": yd, "save_mean": smd, "save_invstd": sid, "running_mean": rmd, "running_var": rvd}
        del yd
    outs = [torch.empty_like(xs[0]) for _ in range(sets)]
    rm, rv = rm0.clone(), rv0.clone()
    stats = [torch.empty(c, device=device) for _ in range(2)]
    torch.cuda.synchronize()

    def our_call(i):
        if backward:
            return probe.lib.probe_bn_backward(
                dys[i].data_ptr(), xs[i].data_ptr(), save_mean.data_ptr(), save_invstd.data_ptr(), weight.data_ptr(),
                outs[i].data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(), n, c, s, stream, probe.error,
                len(probe.error))
        return probe.lib.probe_bn_forward(
            xs[i].data_ptr(), outs[i].data_ptr(), weight.data_ptr(), bias.data_ptr(), rm.data_ptr(), rv.data_ptr(),
            stats[0].data_ptr(), stats[1].data_ptr(), n, c, s, relu, EPS, MOMENTUM, stream, probe.error,
            len(probe.error))

    # The checked variants first, then the diagnostic ones (which leave wrong values in outs).
    ours = sorted((v for v in variants if v["pass"] == case["pass"]), key=lambda v: v["diagnostic"])
    for spec in ours:
        name = spec["name"]
        diagnostic = spec["diagnostic"]
        variant = {"name": name, "E": spec["E"], "kind": spec["kind"]}
        if diagnostic:
            variant["label"] = "nosync (timing only, wrong results)"
        (case["diagnostics"] if diagnostic else case["variants"]).append(variant)
        try:
            plan = probe.plan(backward, n, c, s, name)
        except ProbeError as e:
            if "P > blocks" not in str(e):  # anything but "the shape does not fit this variant" is a failure
                variant["error"] = f"{name}: plan: {e}"
                case["errors"].append(variant["error"])
                failures.append(f"{case['name']} {variant['error']}")
                log(f"FAIL: {case['name']} {variant['error']}")
            else:
                variant["skipped"] = str(e)
            continue
        variant.update(dict(zip(("E", "grid", "blocks_per_sm", "P", "registers", "local_bytes"), plan)))
        if state["timeouts"] >= 2:
            variant["skipped"] = "after two spin timeouts the probe is not run again"
            continue
        try:
            probe.set_variant(name)
            if not diagnostic:
                # Correctness: outputs poisoned with NaN, fresh running stats, one call.
                outs[0].fill_(float("nan"))
                for t in stats:
                    t.fill_(float("nan"))
                rm.copy_(rm0)
                rv.copy_(rv0)
                torch.cuda.synchronize()
                if our_call(0) != 0:
                    raise ProbeError(f"launch: {probe.message()}")
                probe.check("correctness call")
                got = ({"dx": outs[0], "dweight": stats[0], "dbias": stats[1]} if backward else
                       {"y": outs[0], "save_mean": stats[0], "save_invstd": stats[1], "running_mean": rm,
                        "running_var": rv})
                errors = {k: rel_error(got[k], refs[k]) for k in refs}
                worst = max(errors.values(), key=lambda e: math.inf if math.isnan(e) else e)
                variant["rel_errors"] = errors
                variant["rel_error"] = worst
                variant["correct"] = bool(worst <= TOLERANCE)  # False for NaN
                if not variant["correct"]:
                    bad = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
                    raise ProbeError(f"WRONG RESULT (tolerance {TOLERANCE}): {bad}")
            # Timing. Return codes are checked after the loop, so that the timed loop stays asynchronous.
            codes = []
            ms = bench(lambda i: codes.append(our_call(i)), sets)
            if any(codes):
                raise ProbeError(f"a timed call failed: {probe.message()}")
            probe.check("timed calls")
            variant["ms"] = ms
            variant["gbps"] = case["bytes_moved"] / (ms * 1e-3) / 1e9
        except ProbeError as e:
            text = f"{name}{' (diagnostic)' if diagnostic else ''}: {e}"
            variant["error"] = text
            case["errors"].append(text)
            failures.append(f"{case['name']} {text}")
            if "SPIN TIMEOUT" in text:
                state["timeouts"] += 1
                log("=" * 100 + f"\nFAIL: SPIN TIMEOUT in {case['name']} {text}\n" + "=" * 100)
            else:
                log(f"FAIL: {case['name']} {text}")
        finally:
            probe.set_variant(None)
    del refs
    probe.check("end of case")  # a stray flag must not be blamed on the next case

    # Eager PyTorch on the same inputs: what a user gets (cuDNN where PyTorch picks it).
    if backward:
        graphs = []
        for i in range(sets):
            inputs = (xs[i].detach().requires_grad_(), weight.detach().requires_grad_(),
                      bias.detach().requires_grad_())
            graphs.append((inputs, F.batch_norm(inputs[0], None, None, inputs[1], inputs[2], True, MOMENTUM, EPS)))

        def eager(i):
            inputs, y = graphs[i]
            return torch.autograd.grad(y, inputs, dys[i], retain_graph=True)
    else:
        def eager(i):
            y = F.batch_norm(xs[i], rm, rv, weight, bias, True, MOMENTUM, EPS)
            return F.relu(y) if relu else y
    case["eager_ms"] = bench(eager, sets)
    summarize(case, copy_gbps)


def summarize(case, copy_gbps, compile_line=False):
    # Only checked, correct variants are results; case["diagnostics"] (nosync) never are.
    timed = [v for v in case["variants"] if "ms" in v and v.get("correct")]
    best = min(timed, key=lambda v: v["ms"]) if timed else None
    parts = [case["name"] + ":"]
    if best:
        case["best"], case["best_E"], case["ms"], case["gbps"] = best["name"], best["E"], best["ms"], best["gbps"]
        case["copy_fraction"] = best["gbps"] / copy_gbps
        case["eager_over_ours"] = case["eager_ms"] / best["ms"] if "eager_ms" in case else None
        case["rel_error"] = max(v["rel_error"] for v in timed)
        others = " ".join(f"{v['name']}={v['ms']:.3f}" for v in timed)
        parts.append(f"ours {best['ms']:.3f} ms ({best['name']}; {others}) {best['gbps']:.0f} GB/s "
                     f"= {case['copy_fraction']:.2f} of copy")
    else:
        skipped = [v.get("skipped") or v.get("error") for v in case["variants"]]
        parts.append("ours: none (" + "; ".join(str(s) for s in skipped) + ")")
    if "eager_ms" in case:
        parts.append(f"| eager {case['eager_ms']:.3f} ms" + (f" x{case['eager_ms'] / best['ms']:.2f}" if best else ""))
    if "compile_ms" in case:
        case["compile_over_ours"] = case["compile_ms"] / best["ms"] if best else None
        parts.append(f"| compile {case['compile_ms']:.3f} ms" +
                     (f" x{case['compile_ms'] / best['ms']:.2f}" if best else "") +
                     f" (compiled in {case['compile_s']:.1f} s)")
    elif compile_line and "compile_error" in case:
        parts.append(f"| compile failed: {case['compile_error']}")
    if best:
        parts.append(f"| rel err {case['rel_error']:.1e}")
    if case["errors"]:
        parts.append("| FAIL")
    log(" ".join(parts))
    bounds = [v for v in case.get("diagnostics", []) if "ms" in v]
    if bounds and not compile_line:
        fastest = min(bounds, key=lambda v: v["ms"])
        case["nosync_ms"] = fastest["ms"]
        case["nosync_copy_fraction"] = fastest["gbps"] / copy_gbps
        log(f"    upper bound without the barrier (nosync, timing only, wrong results): " +
            " ".join(f"{v['name']}={v['ms']:.3f} ms ({v['gbps'] / copy_gbps:.2f} of copy)" for v in bounds))


def compile_phase(args, results, save, bench, copy_gbps, torch, F, device):
    """torch.compile(dynamic=False) of the same computation, ReLU forwards first, while the budget lasts."""
    compiled = {}

    def forward_fn(relu):
        def bn(x, w, b, rm, rv):
            y = F.batch_norm(x, rm, rv, w, b, True, MOMENTUM, EPS)
            return F.relu(y) if relu else y
        return bn

    def backward_fn(dy, x, w, save_mean, save_invstd):
        return torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, save_mean, save_invstd, True, EPS,
                                                         [True, True, True])

    order = sorted(results["cases"], key=lambda k: (k["pass"] == "backward", -k["relu"]))
    for case in order:
        if "sets" not in case:  # phase 1 never got to it
            continue
        if elapsed() > args.budget:
            log(f"compile: budget of {args.budget:.0f} s spent, {case['name']} and later skipped")
            case["compile_error"] = "skipped: budget"
            continue
        n, c, h, w = case["shape"]
        backward = case["pass"] == "backward"
        key = "backward" if backward else f"forward{case['relu']}"
        try:
            if key not in compiled:
                compiled[key] = torch.compile(backward_fn if backward else forward_fn(case["relu"]), dynamic=False)
            fn = compiled[key]
            g = torch.Generator(device=device).manual_seed(99)
            sets = case["sets"]
            xs = [torch.randn(n, c, h, w, device=device, generator=g) for _ in range(sets)]
            weight = torch.rand(c, device=device, generator=g) + 0.5
            if backward:
                dys = [torch.randn(n, c, h, w, device=device, generator=g) for _ in range(sets)]
                _, sm, si = torch.ops.aten.native_batch_norm(xs[0], weight, None, None, None, True, MOMENTUM, EPS)
                call = lambda i: fn(dys[i], xs[i], weight, sm, si)  # noqa: E731
            else:
                bias = torch.randn(c, device=device, generator=g)
                rm = torch.zeros(c, device=device)
                rv = torch.ones(c, device=device)
                call = lambda i: fn(xs[i], weight, bias, rm, rv)  # noqa: E731
            t0 = time.monotonic()
            call(0)
            torch.cuda.synchronize()
            case["compile_s"] = time.monotonic() - t0
            case["compile_ms"] = bench(call, sets)
        except Exception as e:  # noqa: BLE001 - a baseline failing is not the probe failing
            case["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            xs = dys = None  # noqa: F841
            torch.cuda.empty_cache()
        summarize(case, copy_gbps, compile_line=True)
        save()


if __name__ == "__main__":
    sys.exit(main())
