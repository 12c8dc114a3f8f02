// Registration of the CPU backend: 64-byte aligned host memory and the CPU implementations.
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/backend_registry.h"
#include "cpu/cpu_backend.h"
#include "fusedmoe/formats.h"

namespace fusedmoe {
namespace {

void* cpu_allocate(size_t bytes, Device) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  return p;
}

void cpu_deallocate(void* p, Device) { std::free(p); }

bool cpu_available() { return true; }

void cpu_copy(void* dst, Device, const void* src, Device, size_t bytes) { std::memcpy(dst, src, bytes); }

void cpu_pack_fp4_sm90(void* data, size_t bytes, size_t row_bytes, Device) {
  auto* p = static_cast<unsigned char*>(data);
  const size_t tile_bytes = kFp4TileRows * row_bytes;
  std::vector<unsigned char> tile(tile_bytes);
  for (size_t at = 0; at + tile_bytes <= bytes; at += tile_bytes) {  // one tile of 16 rows at a time, in place
    std::memcpy(tile.data(), p + at, tile_bytes);
    for (size_t i = 0; i < kFp4TileRows; ++i)
      for (size_t seg = 0; seg < row_bytes / 16; ++seg) {
        uint32_t in[4], out[4];
        std::memcpy(in, tile.data() + i * row_bytes + seg * 16, 16);
        fp4_pack_segment_sm90(in, out);
        std::memcpy(p + at + fp4_sm90_segment_offset(int64_t(i), int64_t(seg), int64_t(row_bytes)), out, 16);
      }
  }
}

}  // namespace

const BackendImpl& cpu_backend() {
  static const BackendImpl impl{Backend::cpu,       "cpu",          DeviceKind::cpu,
                                cpu_allocate,       cpu_deallocate, cpu_copy,
                                cpu::make_experts,  cpu::make_prepare_finalize, cpu_available,
                                cpu::route,         cpu_pack_fp4_sm90};
  return impl;
}

}  // namespace fusedmoe
