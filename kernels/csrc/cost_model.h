// Cost model of one plan-scan call: the launches the driver issues (recorded by walking the driver itself),
// their grids, threads and the global-memory bytes each moves, the workspace, and the op's minimum bytes.
// Plain C++ (no torch, no CUDA): the binding exposes it as `schedule(...)` so tests and benchmarks print it.
//
// Bytes are first-touch global traffic: every pass reads what it uses once (the backward's recomputation
// inside a block re-reads data it touched a few steps earlier, which L1/L2 serve, and is not counted). A map
// input shared by the directions is read once per direction. Steps with an output: min(Lk, L) per direction.
#pragma once
#include <algorithm>
#include <vector>

#include "scan_driver.h"

namespace vssm {

struct LaunchCost {
  LaunchRecord launch;
  int64_t threads = 0;
  int64_t bytes = 0;
};

struct CostModel {
  bool backward = false;
  ScanParams p;
  std::vector<LaunchCost> launches;
  int64_t bytes = 0;            // sum over launches, plus torch's reduction of the partials (backward)
  int64_t min_bytes = 0;        // inputs read once + outputs written once
  int64_t input_bytes = 0;      // the op's inputs (backward: with grad_out), the workspace bound's unit
  int64_t workspace_bytes = 0;  // float32 scratch
  int passes = 0;               // reads of the per-token inputs from global memory
  int64_t scan_threads = 0;     // threads of the main scan launch (one direction's, when per direction)
  double mean_steps = 0;        // steps per chunk, averaged
  double lanes_used = 0;        // fraction of a block's threads that have a channel
};

// bytes of one (batch, direction)'s per-step reads of a scan pass
struct StepBytes {
  int64_t u, din, bc1, chan;  // u, Δ input (dts or Δ), one of B/C, one per-channel map value (z, grad_out)
  explicit StepBytes(const ScanParams& p)
      : u(int64_t(p.Dm) * p.elem_bytes),
        din(int64_t(p.R > 0 ? p.R : p.Dm) * p.elem_bytes),
        bc1(int64_t(p.N) * p.elem_bytes),
        chan(int64_t(p.Dm) * p.elem_bytes) {}
};

// float32 accumulator traffic of direction k over its visited positions: the first stores, the middle ones
// read and write, the last (fused) reads and writes the final value in T
inline int64_t acc_bytes(const ScanParams& p, int k, int64_t visited) {
  const int64_t per = int64_t(p.Dm) * visited;
  const bool first = k == 0 && p.store_first, last = k == p.K - 1 && p.fuse_finalize;
  if (first && last) return per * p.elem_bytes;
  if (first) return per * 4;
  if (last) return per * (4 + p.elem_bytes);
  return per * 8;
}

inline int64_t launch_bytes(const ScanParams& p, const LaunchRecord& l, bool backward) {
  const StepBytes s(p);
  const int64_t es = p.elem_bytes, Lk = p.Lk, visited = std::min<int64_t>(p.Lk, p.L);
  const int64_t BK = int64_t(p.Bt) * p.K, nch = p.nchunks;
  const int64_t dirs = l.k >= 0 ? 1 : p.K;  // directions covered by this launch
  const int64_t Bd = int64_t(p.Bt) * dirs;
  const int64_t states = int64_t(p.Dm) * p.N * 4 * nch;  // per (b, k)
  const int64_t map = int64_t(p.Bt) * p.L * p.Dm;
  const std::string& n = l.name;
  if (n == "chunk_state") return BK * (Lk * (s.u + s.din + s.bc1) + states + int64_t(p.Dm) * 4 * nch);
  if (n == "chunk_combine" || n == "carry_combine") return BK * (2 * states + int64_t(p.Dm) * 4 * nch);
  if (n == "chunk_carry") return BK * (Lk * (s.din + s.bc1 + s.chan + (p.has_z ? s.chan : 0)) + states);
  if (n == "chunk_output") {
    int64_t b = Bd * Lk * (s.u + s.din + 2 * s.bc1) + (nch > 1 ? Bd * states : 0);
    if (!p.merged()) return b + Bd * visited * s.chan * ((p.has_z ? 1 : 0) + 1);  // z read, out written
    b += int64_t(p.Bt) * acc_bytes(p, l.k, visited);
    if (l.k == p.K - 1 && p.fuse_finalize && p.has_z) b += int64_t(p.Bt) * visited * s.chan;
    return b;
  }
  if (n == "map_finalize") return map * (4 + es + (p.has_z ? es : 0));
  if (n == "backward_main") {
    int64_t b = Bd * Lk * (s.u + s.din + 2 * s.bc1 + s.chan + (p.has_z ? s.chan : 0));  // reads
    b += nch > 1 ? Bd * 2 * states : 0;
    b += Bd * Lk * (s.din + 2 * s.bc1);  // d(dts) or dΔ, dB, dC written
    if (p.seq_u || p.merge == kMergeGroup) b += Bd * (p.seq_u ? Lk : visited) * s.chan;  // du written
    else b += int64_t(p.Bt) * acc_bytes(p, l.k, visited);
    if (p.has_z) b += p.merge == kMergeGroup ? Bd * visited * s.chan : int64_t(p.Bt) * acc_bytes(p, l.k, visited);
    // partials: every batch read-modify-writes its slot's (dA, dD, dbias, dW)
    const int64_t part = int64_t(p.N) + (p.has_D ? 1 : 0) + (p.has_bias ? 1 : 0) + p.R;
    b += Bd * nch * p.Dm * part * 8;
    return b;
  }
  if (n == "backward_finalize") {
    int64_t b = 0;
    if (p.bwd_uses_acc()) b += map * (4 + es);
    if (p.bwd_uses_accy()) b += map * (4 + 3 * es);  // accy, z, grad_out read; dz written
    return b;
  }
  return 0;
}

inline int64_t gradient_bytes(const ScanParams& p) {
  const int64_t es = p.elem_bytes, BK = int64_t(p.Bt) * p.K, KD = int64_t(p.K) * p.Dm;
  const int64_t u = p.seq_u ? BK * p.Dm * p.Lk : int64_t(p.Bt) * p.map_channels() * p.L;
  const int64_t per_token = u + BK * (p.R > 0 ? p.R : p.Dm) * p.Lk + 2 * BK * p.N * p.Lk +
                            (p.has_z ? int64_t(p.Bt) * p.map_channels() * p.L : 0);
  return es * per_token + 4 * (KD * p.N + (p.has_D ? KD : 0) + (p.has_bias ? KD : 0) + KD * p.R);
}

// p: sizes, flags and coverage set; the configuration is chosen here (chunk/tile/sub/slots 0 = automatic).
inline CostModel cost_model(ScanParams p, bool backward, int num_sms, int chunk = 0, int tile = 0, int sub = 0,
                            int slots = 0, int chunk_slots = 0) {
  CostModel m;
  m.backward = backward;
  if (backward) choose_backward_config(p, num_sms, chunk, tile, sub, slots, chunk_slots);
  else choose_forward_config(p, num_sms, chunk, tile);
  RecordDev rec;
  if (backward) run_backward<RecordDev, float, 1>(rec, p);
  else run_forward<RecordDev, float, 1>(rec, p);
  for (const auto& l : rec.launches) {
    LaunchCost c{l, int64_t(l.grid.x) * l.grid.y * l.grid.z * l.block.x * l.block.y * l.block.z,
                 launch_bytes(p, l, backward)};
    m.bytes += c.bytes;
    if (l.name == (backward ? "backward_main" : "chunk_output")) m.scan_threads = std::max(m.scan_threads, c.threads);
    m.launches.push_back(c);
  }
  const Workspace w = backward ? backward_workspace(p) : forward_workspace(p);
  m.workspace_bytes = w.bytes();
  if (backward) m.bytes += 4 * (w.dA + w.dD + w.dbias + w.dW);  // torch sums the partials
  m.input_bytes = input_bytes(p, backward);
  m.min_bytes = backward ? m.input_bytes + gradient_bytes(p) : m.input_bytes + output_bytes(p);
  m.passes = backward ? 1 + (p.nchunks > 1 ? 2 : 0) : 1 + (p.nchunks > 1 ? 1 : 0);
  m.mean_steps = static_cast<double>(p.Lk) / p.nchunks;
  m.lanes_used = static_cast<double>(p.Dm) / (static_cast<double>(p.ntiles) * p.tile);
  m.p = p;
  return m;
}

}  // namespace vssm
