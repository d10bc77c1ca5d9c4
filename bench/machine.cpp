#include "bench/machine.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>

namespace fusednorm::bench {
namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.starts_with("model name")) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown CPU";
}

// sysfs writes cache sizes as "266240K".
int64_t parse_cache_size(const std::string& text) {
  char* end = nullptr;
  int64_t value = std::strtoll(text.c_str(), &end, 10);
  if (end && (*end == 'K' || *end == 'k')) value *= 1024;
  if (end && (*end == 'M' || *end == 'm')) value *= 1024 * 1024;
  return value;
}

// The largest cache of the highest level sysfs lists for cpu0.
int64_t llc_from_sysfs() {
  int64_t best_level = 0, best_size = 0;
  for (int index = 0; index < 8; index++) {
    std::string dir = fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}/", index);
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int64_t level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size)) continue;
    if (level > best_level || (level == best_level && parse_cache_size(size) > best_size)) {
      best_level = level;
      best_size = parse_cache_size(size);
    }
  }
  return best_size;
}

double load_average() {
  double one_minute = 0;
  std::ifstream("/proc/loadavg") >> one_minute;
  return one_minute;
}

// The first line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ...", in clock ticks.
double busy_seconds_all_cpus() {
  std::ifstream stat("/proc/stat");
  std::string label;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  stat >> label >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double own_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace

CpuSample sample_cpu() {
  return {std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(),
          busy_seconds_all_cpus(), own_cpu_seconds()};
}

std::optional<double> others_cpu_share(const CpuSample& start, const CpuSample& end, int cores) {
  constexpr double kShortestInterval = 0.25;  // 25 ticks per CPU: a few percent of resolution
  if (end.wall_seconds - start.wall_seconds < kShortestInterval) return std::nullopt;
  const double available = (end.wall_seconds - start.wall_seconds) * cores;
  const double others = (end.busy_seconds - start.busy_seconds) - (end.own_seconds - start.own_seconds);
  return std::clamp(others / available, 0.0, 1.0);
}

MachineInfo describe_machine() {
  MachineInfo m;
  m.cpu_model = cpu_model();
  m.cores = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  // sysfs first: the cache cpu0 shares, as the kernel reads it. glibc's sysconf can report more than the cores see:
  // on a 2-core AMD EPYC VM, 256 MiB (the whole package's L3) where sysfs had the 32 MiB of the cores' complex,
  // which timed 200 MB working sets as cache-resident.
  if (int64_t sysfs = llc_from_sysfs(); sysfs > 0) {
    m.llc_bytes = sysfs;
    m.llc_source = "sysfs";
  } else if (long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE); l3 > 0) {
    m.llc_bytes = l3;
    m.llc_source = "L3, sysconf";
  } else {
    // Larger than most client L3s: erring large times more shapes cold, which is the safe side.
    m.llc_bytes = 64 << 20;
    m.llc_source = "unknown, assumed";
  }
  m.memory_bytes = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  m.date = fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                       fmt::gmtime(std::chrono::system_clock::to_time_t(std::chrono::system_clock::now())));
  m.load_average = load_average();
  return m;
}

std::string mebibytes(int64_t bytes) { return fmt::format("{:.0f} MiB", static_cast<double>(bytes) / (1 << 20)); }

std::string megabytes(int64_t bytes) { return fmt::format("{:.1f} MB", static_cast<double>(bytes) / 1e6); }

}  // namespace fusednorm::bench
