#pragma once
// Statistics of a dump that predict how hard it is to quantize (`kvq inspect`).
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/spec.h"
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
  // The same three after the keys are divided by their token scale and rotated (InspectOptions).
  double outlier_ratio_after = 0, imbalance_mean_after = 0, imbalance_max_after = 0;
  double value_mean = 0, value_std = 0, value_max_abs = 0;
};

inline constexpr int kImbalanceGroup = 32;

// The key transform whose effect `kvq inspect` reports (OScaR's by default).
struct InspectOptions {
  Rotation rotation = Rotation::hadamard;
  TokenScale token_scale = TokenScale::omni;
  int rotation_seed = 0;
};

std::vector<LayerStats> inspect_dump(const data::DumpReader& dump, const InspectOptions& options = {});
std::string inspect_text(const data::DumpReader& dump, const std::vector<LayerStats>& stats,
                         const InspectOptions& options = {});
nlohmann::json inspect_json(const data::DumpReader& dump, const std::vector<LayerStats>& stats,
                            const InspectOptions& options = {});

}  // namespace kvq::analysis
