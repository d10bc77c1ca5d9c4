#pragma once
// The worker threads the kernels use: Halide's thread pool, one per process, shared by every call.
//
// Its size starts as HL_NUM_THREADS when that environment variable is set when the first kernel runs, and as
// the number of online CPUs otherwise, clamped to [1, 256] (Halide's rule: HL_NUM_THREADS=0 or a non-number
// gives 1). num_threads() answers that size also before the first kernel. set_num_threads() changes it for every later call (0 restores the
// default). Kernels called from several application threads at once share the pool; each call also works on
// its calling thread.
namespace fusednorm {

int num_threads();
// n >= 1 threads, or 0 for the default; returns the previous number. Throws fusednorm::Error for n < 0.
int set_num_threads(int n);

}  // namespace fusednorm
