// The CUDA emulation runtime (see README.md): runs a grid's blocks one after another on the calling
// CPU thread, each CUDA thread of a block a fiber with its own stack. A fiber runs until it waits at
// __syncthreads or a warp shuffle; when every live thread of the block (or of the warp) waits, they
// go on. A barrier that can never complete (a full-warp shuffle missing a lane, threads split between
// a shuffle and __syncthreads) aborts the process with the block and thread, as it would hang or be
// undefined on a GPU.
//
// GAN_KERNELS_EMULATION_ORDER=reverse runs the fibers between barriers from the last thread to the
// first, and the blocks from the last to the first: a kernel whose results change with the order has a
// race between its threads, or depends on the order in which the GPU starts its blocks.
#include <cuda_runtime.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA emulation's fibers switch stacks with x86-64 code"
#endif

// Saves the callee-saved registers on the current stack, stores the stack pointer in *from, and
// resumes the fiber whose saved stack pointer is `to`. The floating-point control words are not
// switched (saving them was a third of the emulation's time): every fiber of a CPU thread shares
// them, and no kernel changes them.
extern "C" void gan_kernels_emulation_switch(void** from, void* to);
asm(R"(
.text
.globl gan_kernels_emulation_switch
.type gan_kernels_emulation_switch, @function
gan_kernels_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size gan_kernels_emulation_switch, .-gan_kernels_emulation_switch
.section .note.GNU-stack,"",@progbits
.text
)");

namespace gan_kernels_emulation {

GAN_KERNELS_EMULATION_THREAD_LOCAL const ThreadPlace* current_place = nullptr;

namespace {

constexpr size_t kStackBytes = size_t(128) << 10;
#ifdef __SANITIZE_ADDRESS__
constexpr size_t kAbandonedFrameBytes = size_t(8) << 10;
#endif
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kDynamicSharedLimit = size_t(48) << 10;  // without cudaFuncSetAttribute

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ThreadPlace place;
  State state = State::Done;
  void* sp = nullptr;
  unsigned shuffles = 0;  // this thread's warp shuffles so far
};

// Fiber stacks, kept for the next grid of the same CPU thread: mapping a thousand stacks per launch
// cost more than the kernels.
struct StackPool {
  std::vector<unsigned char*> stacks;

  void reserve(size_t count) {
    while (stacks.size() < count) {
      void* stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (stack == MAP_FAILED) std::abort();
      stacks.push_back(static_cast<unsigned char*>(stack));
    }
  }
  ~StackPool() {
    for (unsigned char* stack : stacks) munmap(stack, kStackBytes);
  }
};
GAN_KERNELS_EMULATION_THREAD_LOCAL StackPool stack_pool;

struct Block {
  std::vector<Fiber> fibers;
  std::vector<unsigned char> dynamic_shared;
  // The static shared variables this block has filled (static_shared).
  std::vector<const void*> static_shared_filled;
  // Two sets of one value per thread, used by alternate shuffles: a lane writes a set again only two
  // shuffles later, after a barrier that every lane reaches once done reading it.
  std::vector<uint64_t> shuffle_slots[2];
  void* scheduler_sp = nullptr;
  Fiber* running = nullptr;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  bool reverse = false;
};

GAN_KERNELS_EMULATION_THREAD_LOCAL Block* current_block = nullptr;
GAN_KERNELS_EMULATION_THREAD_LOCAL cudaError_t last_error = cudaSuccess;
// Shared memory is a set of statics: one grid at a time in the whole process.
std::mutex grid_mutex;

[[noreturn]] void fail(const std::string& what) {
  const Fiber* f = current_block != nullptr ? current_block->running : nullptr;
  if (f != nullptr) {
    std::fprintf(stderr, "CUDA emulation: %s (block %u,%u,%u thread %u,%u,%u)\n", what.c_str(), f->place.block.x,
                 f->place.block.y, f->place.block.z, f->place.thread.x, f->place.thread.y, f->place.thread.z);
  } else {
    std::fprintf(stderr, "CUDA emulation: %s\n", what.c_str());
  }
  std::abort();
}

void yield_to_scheduler() {
  Block& b = *current_block;
  gan_kernels_emulation_switch(&b.running->sp, b.scheduler_sp);
}

[[noreturn]] void fiber_entry() {
  Block& b = *current_block;
  b.body(b.context);
  b.running->state = State::Done;
  yield_to_scheduler();
  fail("a finished fiber was resumed");
}

// A fresh stack whose first switch "returns" into fiber_entry with the ABI's alignment.
void* initial_stack(unsigned char* stack) {
#ifdef __SANITIZE_ADDRESS__
  // The last fiber on this stack never returned from its final switch: AddressSanitizer still marks
  // the redzones of those frames, the first few at the top of the stack (all deeper ones returned).
  __asan_unpoison_memory_region(stack + kStackBytes - kAbandonedFrameBytes, kAbandonedFrameBytes);
#endif
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStackBytes) & ~uintptr_t(15);
  top -= 16;                                  // the return address sits at a multiple of 16
  auto* ret = reinterpret_cast<void**>(top);  // so that fiber_entry starts as if called
  *ret = reinterpret_cast<void*>(&fiber_entry);
  auto* frame = reinterpret_cast<unsigned char*>(top) - 6 * 8;  // the six saved registers
  std::memset(frame, 0, 6 * 8);
  return frame;
}

unsigned warp_size_of(const Block& b, size_t first) {
  const size_t n = b.fibers.size();
  return unsigned(n - first < 32 ? n - first : 32);
}

// Releases waiting fibers once a barrier is complete; false when none could be released.
bool release(Block& b) {
  bool released = false;
  const size_t n = b.fibers.size();
  for (size_t first = 0; first < n; first += 32) {
    const unsigned lanes = warp_size_of(b, first);
    unsigned at_warp = 0;
    for (unsigned l = 0; l < lanes; ++l) at_warp += b.fibers[first + l].state == State::AtWarpBarrier;
    if (at_warp == 0) continue;
    if (at_warp != 32) {
      b.running = &b.fibers[first];
      fail("a full-warp shuffle that not all 32 lanes of the warp reach (exited, at __syncthreads, or a warp of " +
           std::to_string(lanes) + " threads)");
    }
    for (unsigned l = 0; l < lanes; ++l) b.fibers[first + l].state = State::Runnable;
    released = true;
  }
  if (released) return true;
  bool any_waiting = false;
  for (const Fiber& f : b.fibers) any_waiting |= f.state == State::AtBlockBarrier;
  if (!any_waiting) return false;
  for (Fiber& f : b.fibers) {
    if (f.state == State::AtBlockBarrier) f.state = State::Runnable;
  }
  return true;
}

void run_block(Block& b) {
  const size_t n = b.fibers.size();
  for (size_t t = 0; t < n; ++t) {
    b.fibers[t].state = State::Runnable;
    b.fibers[t].sp = initial_stack(stack_pool.stacks[t]);
    b.fibers[t].shuffles = 0;
  }
  for (;;) {
    bool ran = false;
    for (size_t k = 0; k < n; ++k) {
      Fiber& f = b.fibers[b.reverse ? n - 1 - k : k];
      if (f.state != State::Runnable) continue;
      b.running = &f;
      current_place = &f.place;
      gan_kernels_emulation_switch(&b.scheduler_sp, f.sp);
      ran = true;
    }
    b.running = nullptr;
    current_place = nullptr;
    if (!release(b) && !ran) return;
  }
}

bool reverse_order() {
  const char* order = std::getenv("GAN_KERNELS_EMULATION_ORDER");
  if (order == nullptr || std::string(order) == "forward") return false;
  if (std::string(order) == "reverse") return true;
  fail(std::string("GAN_KERNELS_EMULATION_ORDER must be forward or reverse, got ") + order);
}

cudaError_t check_configuration(dim3 grid, dim3 block, size_t dynamic_shared_bytes) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64) return cudaErrorInvalidConfiguration;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (dynamic_shared_bytes > kDynamicSharedLimit) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace

void sync_block() {
  Block& b = *current_block;
  b.running->state = State::AtBlockBarrier;
  yield_to_scheduler();
}

uint64_t shuffle_xor(unsigned mask, uint64_t bits, int lane_mask, int width) {
  Block& b = *current_block;
  if (mask != 0xffffffffu || width != 32 || lane_mask < 0 || lane_mask >= 32) {
    fail("only full-warp xor shuffles are emulated");
  }
  const size_t t = size_t(b.running - b.fibers.data());
  const size_t first = t / 32 * 32;
  std::vector<uint64_t>& slots = b.shuffle_slots[b.running->shuffles++ % 2];
  slots[t] = bits;
  b.running->state = State::AtWarpBarrier;
  yield_to_scheduler();  // every lane has written its value
  return slots[first + ((t - first) ^ size_t(lane_mask))];
}

void* dynamic_shared() { return current_block->dynamic_shared.data(); }

void static_shared(void* data, size_t bytes) {
  std::vector<const void*>& filled = current_block->static_shared_filled;
  if (std::find(filled.begin(), filled.end(), data) != filled.end()) return;
  filled.push_back(data);
  std::memset(data, 0xff, bytes);
}

void run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* context) {
  const cudaError_t error = check_configuration(grid, block, dynamic_shared_bytes);
  if (error != cudaSuccess) {
    last_error = error;
    return;
  }
  const std::lock_guard<std::mutex> lock(grid_mutex);
  Block b;
  const size_t threads = size_t(block.x) * block.y * block.z;
  b.fibers.resize(threads);
  for (std::vector<uint64_t>& slots : b.shuffle_slots) slots.resize(threads);
  stack_pool.reserve(threads);
  b.dynamic_shared.resize(dynamic_shared_bytes);
  for (size_t t = 0; t < threads; ++t) {
    b.fibers[t].place = {{unsigned(t % block.x), unsigned(t / block.x % block.y), unsigned(t / block.x / block.y)},
                         {0, 0, 0},
                         block,
                         grid};
  }
  b.body = body;
  b.context = context;
  b.reverse = reverse_order();
  Block* const outer = current_block;
  current_block = &b;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t index = b.reverse ? blocks - 1 - k : k;
    const unsigned x = unsigned(index % grid.x);
    const unsigned y = unsigned(index / grid.x % grid.y);
    const unsigned z = unsigned(index / grid.x / grid.y);
    for (Fiber& f : b.fibers) f.place.block = {x, y, z};
    // Shared memory starts as garbage on a GPU: here a NaN-like byte pattern, so that a read before any
    // write shows.
    std::fill(b.dynamic_shared.begin(), b.dynamic_shared.end(), 0xff);
    b.static_shared_filled.clear();
    run_block(b);
  }
  current_block = outer;
}

}  // namespace gan_kernels_emulation

cudaError_t cudaGetLastError() {
  const cudaError_t error = gan_kernels_emulation::last_error;
  gan_kernels_emulation::last_error = cudaSuccess;
  return error;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}

void __nanosleep(unsigned) {
  gan_kernels_emulation::fail(
      "a block waits for blocks that have not run: each block it waits for must start before it");
}

void __trap() { gan_kernels_emulation::fail("__trap"); }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
