#pragma once
// Asynchronous global -> shared copies (cp.async, sm_80+) for the multi-stage pipelines of the
// decode kernels: a block keeps several stages of the cache in flight while it computes on one,
// which is what a memory-bound kernel needs to reach the bandwidth roofline.
#include <cstdint>

namespace kvq::gpu {

// One 16-byte cp.async (both addresses 16-byte aligned), kept in L2 only: streamed data is read once.
__device__ __forceinline__ void copy16(unsigned smem, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(src) : "memory");
}

// copy16 whose L2 miss fetches the whole 256-byte block around src from memory, for stages made of
// contiguous blocks: the InnerQ values' stretches (H100, paper shape, N = 32768: 23.2 -> 22.9 us; the
// keys' loads gained nothing from the hint and the KIVI values lost 0.4-1.4%, docs/PERF.md).
__device__ __forceinline__ void copy16_fetch256(unsigned smem, const void* src) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(smem), "l"(src) : "memory");
}

// Starts copying [src, src + bytes) to shared memory, split among `threads` threads: whole 16-byte
// pieces from src rounded down to 16 bytes (cp.async moves aligned pieces, so smem needs 16 bytes of
// headroom), then the tail in 4-byte pieces and a last 2-byte value (fp16 metadata) copied directly:
// nothing past src + bytes is read. Returns where src sits in smem (its offset within the first piece).
__device__ __forceinline__ int copy_async(void* smem, const void* src, long long bytes, int thread, int threads) {
  if (bytes <= 0) return 0;
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(src);
  const std::uintptr_t start = begin & ~std::uintptr_t{15};
  const std::uintptr_t end = begin + static_cast<std::uintptr_t>(bytes);
  const std::uintptr_t whole_end = (end & ~std::uintptr_t{15}) > start ? (end & ~std::uintptr_t{15}) : start;
  const int pieces = static_cast<int>((whole_end - start) / 16), words = static_cast<int>((end - whole_end) / 4);
  const bool half = ((end - whole_end) & 3u) != 0;  // 2 bytes left (arrays are of 2- or 4-byte elements)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  for (int i = thread; i < pieces + words + (half ? 1 : 0); i += threads) {
    if (i < pieces) {
      copy16(dst + 16u * i, reinterpret_cast<const void*>(start + 16u * i));
    } else if (i < pieces + words) {
      const unsigned at = 16u * pieces + 4u * (i - pieces);
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst + at), "l"(start + at) : "memory");
    } else {
      const unsigned at = static_cast<unsigned>(end - 2 - start);
      *reinterpret_cast<std::uint16_t*>(static_cast<char*>(smem) + at) = *reinterpret_cast<const std::uint16_t*>(end - 2);
    }
  }
  return static_cast<int>(begin - start);
}

__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `Pending` committed groups of this thread are still in flight.
template <int Pending>
__device__ __forceinline__ void copy_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// A warp's ring of Stages shared-memory stages filled by cp.async: piece i of the warp's sequence
// sits in stages[i % Stages], Stages - 1 pieces in flight while the warp works on one. Before piece
// i, ring_refill starts the copy of piece i + Stages - 1 with `copy` (which commits its own group)
// into the stage piece i - 1 used, once every lane is done reading it; past the end (!more) it
// commits an empty group, so that ring_landed always leaves exactly Stages - 1 groups pending.
// Every lane of the warp calls both.
template <int Stages, class Stage, class Copy>
__device__ __forceinline__ void ring_refill(unsigned i, bool more, Stage* stages, Copy&& copy) {
  __syncwarp();
  if (more) copy(stages[(i + Stages - 1) % Stages]);
  else copy_commit();
}
// Piece i once every lane's copies of it have landed.
template <int Stages, class Stage>
__device__ __forceinline__ Stage& ring_landed(unsigned i, Stage* stages) {
  copy_wait<Stages - 1>();
  __syncwarp();
  return stages[i % Stages];
}

}  // namespace kvq::gpu
