#pragma once
// The KV-dump format, version 1 (data/FORMAT.md): one HDF5 file per dump with
// keys/values [num_layers, num_kv_heads, seq_len, head_dim], optional queries
// [num_layers, num_heads, seq_len, head_dim], keys_pre_rope and positions.
// Reading is slab by slab, one (layer, head) at a time, so a dump larger than
// memory is never loaded whole; any chunking, compression or contiguous layout
// and float16/float32/float64 data are accepted.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "data/h5.h"

namespace kvq::data {

inline constexpr const char* kFormatName = "kvq-kv-dump";
inline constexpr int kFormatVersion = 1;

enum class Dataset { keys, values, queries, keys_pre_rope };
inline constexpr Dataset kAllDatasets[] = {Dataset::keys, Dataset::values, Dataset::queries, Dataset::keys_pre_rope};
const char* dataset_name(Dataset dataset);

struct DumpInfo {
  std::string model = "unknown";
  std::string source = "synthetic";
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int seq_len = 0;
  std::optional<double> rope_theta;
  std::optional<std::string> text_sha256;
  bool has_queries = false;
  bool has_keys_pre_rope = false;
  bool has_positions = false;

  int heads_of(Dataset dataset) const { return dataset == Dataset::queries ? num_heads : num_kv_heads; }
  // Whether the dump holds this dataset (keys and values always; queries and keys_pre_rope optionally).
  bool has(Dataset dataset) const {
    return dataset == Dataset::queries ? has_queries : dataset == Dataset::keys_pre_rope ? has_keys_pre_rope : true;
  }
  int group_size() const { return num_heads / num_kv_heads; }  // query heads per kv head
};

// How a dataset is stored, for `kvq inspect`.
struct DatasetLayout {
  std::string dtype;                // float16, float32, float64
  std::vector<unsigned long long> chunk;  // empty when contiguous
  std::string compression;          // "gzip-4", "none", ...
};

class DumpReader {
 public:
  // Opens and validates every attribute and shape against each other; throws kvq::Error
  // naming the file and the dataset or attribute.
  explicit DumpReader(const std::string& path);

  const std::string& path() const { return path_; }
  const DumpInfo& info() const { return info_; }
  DatasetLayout layout(Dataset dataset) const;

  // One (layer, head) slab as float32, seq_len x head_dim row-major. Thread-safe.
  void read_slab(Dataset dataset, int layer, int head, std::vector<float>& out) const;
  std::vector<std::int64_t> positions() const;

  // Scans every dataset slab by slab; throws kvq::Error with the count of NaN/Inf values
  // and the position of the first one.
  void check_finite() const;

 private:
  std::string path_;
  Hid file_;
  DumpInfo info_;
};

struct WriteOptions {
  bool fp16 = false;     // store float16 instead of float32
  bool compress = true;  // gzip level 4, one (layer, head) slab per chunk
};

// Writes a dump to a temporary file and moves it into place on commit(); destroyed
// without commit(), it leaves no file behind.
class DumpWriter {
 public:
  DumpWriter(const std::string& path, const DumpInfo& info, const WriteOptions& options);
  ~DumpWriter();

  void write_slab(Dataset dataset, int layer, int head, const float* data);
  void write_positions(const std::vector<std::int64_t>& positions);
  // Root attributes kvq_version, git_commit and command: the provenance every kvq dump records.
  void write_provenance(const std::string& command);
  // For extra attributes (provenance) and groups (packed/).
  hid_t file() const { return file_.get(); }
  void commit();

 private:
  hid_t dataset(Dataset d) const;
  DumpInfo info_;
  WriteOptions options_;
  AtomicFile output_;
  Hid file_;
  Hid sets_[4];
};

}  // namespace kvq::data
