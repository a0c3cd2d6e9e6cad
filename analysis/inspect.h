#pragma once
// Statistics of a dump that predict how hard it is to quantize (`kvq inspect`).
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/kv_dump.h"

namespace kvq::analysis {

struct OutlierChannel {
  int kv_head = 0;
  int channel = 0;
  double max_abs = 0;  // max over tokens of |K[t, channel]|
};

struct LayerStats {
  int layer = 0;
  std::vector<OutlierChannel> top_channels;  // largest per-channel max |K| over all kv heads, top 3
  double outlier_ratio = 0;   // largest per-channel max |K| / median per-channel max |K|
  double imbalance_mean = 0;  // token-norm imbalance (max/min key L2 norm in each 32-token group), mean
  double imbalance_max = 0;   // and worst group
  double value_mean = 0, value_std = 0, value_max_abs = 0;
};

inline constexpr int kImbalanceGroup = 32;

std::vector<LayerStats> inspect_dump(const data::DumpReader& dump);
std::string inspect_text(const data::DumpReader& dump, const std::vector<LayerStats>& stats);
nlohmann::json inspect_json(const data::DumpReader& dump, const std::vector<LayerStats>& stats);

// Token-norm imbalance of one slab (T x d): max/min L2 norm of the keys inside each
// group of `group` consecutive tokens (a last partial group counts when it has 2+ tokens).
std::vector<double> token_norm_imbalance(const std::vector<float>& keys, int seq_len, int head_dim, int group);

}  // namespace kvq::analysis
