#pragma once
// What the numbers were measured on: printed at the top of the table and stored in the JSON.
#include <cstdint>
#include <optional>
#include <string>

namespace fusednorm::bench {

struct MachineInfo {
  std::string cpu_model;     // /proc/cpuinfo "model name"
  int cores = 1;             // online logical CPUs
  int64_t llc_bytes = 0;     // last-level cache size
  std::string llc_source;    // where llc_bytes came from
  int64_t memory_bytes = 0;  // physical memory
  std::string date;          // ISO 8601, UTC
  double load_average = 0;   // 1-minute load average when the run started
};

MachineInfo describe_machine();

// Who used the CPUs between two samples: this machine is shared, and a compiler running beside a row on a
// 2-core machine halves it (worse for OpenMP's static schedules, which wait for a descheduled thread).
struct CpuSample {
  double wall_seconds = 0;
  double busy_seconds = 0;  // all CPUs, all processes, including time the hypervisor stole
  double own_seconds = 0;   // this process
};
CpuSample sample_cpu();
// The share of the machine's CPU time that others used between `start` and `end`, in [0, 1]; none when the
// interval is too short for the kernel's tick-based accounting (/proc/stat counts in 10 ms ticks).
std::optional<double> others_cpu_share(const CpuSample& start, const CpuSample& end, int cores);

// "260 MiB", "12.8 MB": binary units for cache sizes, decimal ones for data (as GB/s is decimal).
std::string mebibytes(int64_t bytes);
std::string megabytes(int64_t bytes);

}  // namespace fusednorm::bench
