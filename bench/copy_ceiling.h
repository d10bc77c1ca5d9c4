#pragma once
// The roofline of a memory-bound kernel, measured in the same run: copying a tensor reads and writes as many
// bytes as the forward must. Two copies, because which is faster depends on the size against the cache:
// regular stores (the line is read for ownership, then written back) and non-temporal stores (written
// straight to memory, no read, the cache left alone).
#include <cstdint>
#include <string>

namespace fusednorm::bench {

enum class CopyStores { regular, non_temporal };

// The row's impl name: "copy" or "copy_nt".
const char* impl_name(CopyStores stores);

// Copies `count` floats using every OpenMP thread, each a contiguous part, with the widest vectors the CPU has.
void parallel_copy(const float* source, float* destination, int64_t count, CopyStores stores);

// The vector width parallel_copy uses on this CPU: "avx512", "avx" or "sse".
std::string copy_isa();

}  // namespace fusednorm::bench
