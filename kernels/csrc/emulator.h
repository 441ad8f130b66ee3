// CPU emulation of the CUDA launch model, to test the kernel bodies of scan_kernels.h without a GPU.
//
// Every thread of a block runs as a fiber (ucontext) on its own stack; Ctx::sync() is a real barrier: the
// fiber yields and resumes only after every thread of the block reached it. A block whose threads do not
// all reach the same barriers (divergent __syncthreads) is reported as an error. Blocks run one after
// another, in reverse order, so results cannot depend on an inter-block order the GPU would not give.
// Shared memory starts as NaN so that reads before writes show up in the results.
// What this cannot show: data races inside a block between barriers, memory coalescing, speed.
#pragma once
#include <ucontext.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

#include "scan_driver.h"

namespace vssm {

template <>
struct Elem<c10::Half> {
  static float load(c10::Half x) { return static_cast<float>(x); }
  static c10::Half store(float x) { return c10::Half(x); }
};
template <>
struct Elem<c10::BFloat16> {
  static float load(c10::BFloat16 x) { return static_cast<float>(x); }
  static c10::BFloat16 store(float x) { return c10::BFloat16(x); }
};

namespace emu {

struct Block {
  struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
  };
  ucontext_t main;
  std::vector<Fiber> fibers;
  const std::function<void(int)>* body = nullptr;
  int current = 0;
};

inline Block*& active_block() {
  static Block* block = nullptr;  // the emulator runs one block at a time, under the GIL
  return block;
}

inline void fiber_entry() {
  Block* blk = active_block();
  const int t = blk->current;
  (*blk->body)(t);
  blk->fibers[t].done = true;  // returning resumes blk->main through uc_link
}

struct Ctx {
  int t, n;
  unsigned x, y, z;
  int tid() const { return t; }
  int nthreads() const { return n; }
  int bx() const { return static_cast<int>(x); }
  int by() const { return static_cast<int>(y); }
  int bz() const { return static_cast<int>(z); }
  void sync() const {
    Block* blk = active_block();
    if (blk == nullptr) throw std::logic_error("emulator: sync() in a body not marked kUsesBarrier");
    swapcontext(&blk->fibers[t].ctx, &blk->main);
  }
};

constexpr size_t kStackBytes = 64 * 1024;

inline void run_block(Block& blk, int nthreads, const std::function<void(int)>& body) {
  blk.fibers.resize(nthreads);
  blk.body = &body;
  active_block() = &blk;
  for (auto& f : blk.fibers) {
    f.done = false;
    f.stack.resize(kStackBytes);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &blk.main;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  for (;;) {  // one round = every live thread runs up to its next barrier (or its end)
    int done = 0;
    for (int t = 0; t < nthreads; ++t) {
      if (blk.fibers[t].done) {
        ++done;
        continue;
      }
      blk.current = t;
      swapcontext(&blk.main, &blk.fibers[t].ctx);
      done += blk.fibers[t].done;
    }
    if (done == nthreads) break;
    if (done > 0) {
      active_block() = nullptr;
      throw std::runtime_error("emulator: a barrier was reached by only some threads of a block");
    }
  }
  active_block() = nullptr;
}

struct Dev {
  template <class Body>
  void launch(Dims grid, Dims block, int64_t smem_bytes, const ScanParams& p) {
    std::vector<float> smem(static_cast<size_t>(smem_bytes / 4) + 1);
    Block blk;
    const int nt = static_cast<int>(block.x * block.y * block.z);
    for (int z = static_cast<int>(grid.z) - 1; z >= 0; --z)
      for (int y = static_cast<int>(grid.y) - 1; y >= 0; --y)
        for (int x = static_cast<int>(grid.x) - 1; x >= 0; --x) {
          std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
          const std::function<void(int)> body = [&](int t) {
            Ctx c{t, nt, static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)};
            Body::run(c, p, smem.data());
          };
          if constexpr (UsesBarrier<Body>::value) {
            run_block(blk, nt, body);
          } else {  // no barrier in the body: threads can run one after another without fibers
            for (int t = nt - 1; t >= 0; --t) body(t);
          }
        }
  }
};

}  // namespace emu
}  // namespace vssm
