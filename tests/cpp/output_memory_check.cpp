// The CPU output cache (csrc/cpu/output_memory.cpp) under threads and fork, torch-free, for
// tests/test_output_memory.py:
// * threads: several threads acquire, fill, check and release blocks of mixed sizes while another
//   changes the limit, empties the cache and reads its stats; every block keeps its contents while
//   held and the counts add up at the end;
// * fork: children forked while a thread keeps taking and giving back blocks each take and give back
//   one block; none may hang on the cache's lock, which the forking thread could find held by a
//   thread the child does not have.
// Prints "<n> failures" last; exits 1 on any failure.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/output_memory.h"

using gan_kernels::acquire_output_block;
using gan_kernels::OutputBlock;
using gan_kernels::release_output_block;

namespace {

constexpr size_t kMiB = size_t(1) << 20;
int failures = 0;

void fail(const char* what) {
  ++failures;
  std::printf("FAIL: %s\n", what);
}

// Sizes on both sides of the huge-page threshold, some sharing a rounded capacity.
size_t size_of(unsigned i) {
  static const size_t sizes[] = {kMiB, kMiB + 1, 2 * kMiB - 4096, 3 * kMiB, 4 * kMiB, 5 * kMiB + 123};
  return sizes[i % (sizeof(sizes) / sizeof(sizes[0]))];
}

void threads_share_the_cache() {
  std::atomic<bool> stop{false};
  std::atomic<int> corrupted{0};
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < 4; ++t) {
    workers.emplace_back([t, &corrupted] {
      for (unsigned i = 0; i < 300; ++i) {
        const size_t bytes = size_of(t + i);
        OutputBlock* block = acquire_output_block(bytes);
        if (block == nullptr || block->bytes != bytes || block->capacity < bytes) {
          ++corrupted;
          continue;
        }
        auto* words = static_cast<uint32_t*>(block->data);
        const size_t n = bytes / sizeof(uint32_t);
        const uint32_t tag = (t << 24) | i;
        for (size_t k = 0; k < n; k += 1024) words[k] = tag;
        words[n - 1] = tag;
        std::this_thread::yield();
        for (size_t k = 0; k < n; k += 1024) corrupted += words[k] != tag;
        corrupted += words[n - 1] != tag;
        release_output_block(block);
      }
    });
  }
  std::thread admin([&stop] {
    for (unsigned i = 0; !stop.load(); ++i) {
      gan_kernels::set_output_cache_limit(i % 3 == 0 ? 0 : (i % 3) * 8 * kMiB);
      (void)gan_kernels::output_cache_stats();
      if (i % 5 == 0) gan_kernels::empty_output_cache();
      std::this_thread::yield();
    }
  });
  for (auto& w : workers) w.join();
  stop = true;
  admin.join();
  if (corrupted.load() != 0) fail("threads: a block came back wrong or changed while held");
  gan_kernels::set_output_cache_limit(64 * kMiB);
  const auto stats = gan_kernels::output_cache_stats();
  if (stats.live_bytes != 0) fail("threads: blocks counted in use after every block was released");
  if (stats.held_bytes > stats.limit_bytes) fail("threads: the cache holds more than its limit");
}

void forks_while_a_thread_uses_the_cache() {
  std::atomic<bool> stop{false};
  std::thread user([&stop] {
    while (!stop.load()) release_output_block(acquire_output_block(kMiB));
  });
  int hung = 0;
  int forks = 0;
  for (; forks < 200 && hung == 0; ++forks) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(5);  // a child stuck on the lock dies of SIGALRM
      OutputBlock* block = acquire_output_block(kMiB);
      if (block == nullptr) _exit(2);
      static_cast<char*>(block->data)[0] = 1;
      release_output_block(block);
      (void)gan_kernels::output_cache_stats();
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    hung += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  stop = true;
  user.join();
  if (hung != 0) {
    std::printf("child %d of 200 failed or hung\n", forks);
    fail("fork: a child could not use the cache");
  }
}

}  // namespace

int main() {
  gan_kernels::set_huge_page_outputs(false);  // not what is tested; keeps the run light
  threads_share_the_cache();
  forks_while_a_thread_uses_the_cache();
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
