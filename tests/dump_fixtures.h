#pragma once
// Dumps written through the raw HDF5 C API with any layout, dtype or defect,
// so the reader is tested on files kvq's own writer would never produce.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <hdf5.h>

#include "core/half.h"
#include "data/h5.h"

namespace kvq::test {

inline float fixture_value(int layer, int head, int t, int c) {
  return std::sin(0.7f * layer + 1.3f * head + 0.01f * t * (c + 1)) * (1.0f + 0.1f * c);
}

struct RawDump {
  int layers = 2, heads = 4, kv_heads = 2, seq_len = 37, head_dim = 32;
  bool half = false;              // float16 data
  std::vector<hsize_t> chunk;     // empty: contiguous
  bool gzip = false;
  bool queries = true;
  // Defects.
  bool omit_keys = false, omit_values = false;
  bool keys_rank3 = false, keys_wrong_len = false;
  bool int_values = false, complex_values = false;
  int attr_heads = -1;            // write this num_heads attribute instead
  std::string omit_attr;          // leave out this attribute
  bool nan_at_values = false;     // one NaN and one Inf in values
};

inline void write_raw_dump(const std::string& path, const RawDump& r) {
  std::lock_guard<std::recursive_mutex> lock(data::h5_lock());
  data::Hid file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  auto attr_s = [&](const char* n, const char* v) {
    if (r.omit_attr != n) data::write_string_attribute(file.get(), n, v);
  };
  auto attr_i = [&](const char* n, long long v) {
    if (r.omit_attr != n) data::write_int_attribute(file.get(), n, v);
  };
  attr_s("kvq_format", "kvq-kv-dump");
  attr_i("format_version", 1);
  attr_s("model", "fixture");
  attr_s("source", "synthetic");
  attr_i("num_layers", r.layers);
  attr_i("num_heads", r.attr_heads > 0 ? r.attr_heads : r.heads);
  attr_i("num_kv_heads", r.kv_heads);
  attr_i("head_dim", r.head_dim);
  attr_i("seq_len", r.seq_len);
  auto write = [&](const char* name, int heads, bool rank3, bool wrong_len, bool as_int, bool as_complex, bool nan) {
    const int T = wrong_len ? r.seq_len + 1 : r.seq_len;
    std::vector<hsize_t> dims = {static_cast<hsize_t>(r.layers), static_cast<hsize_t>(heads), static_cast<hsize_t>(T),
                                 static_cast<hsize_t>(r.head_dim)};
    if (rank3) dims = {static_cast<hsize_t>(r.layers * heads), static_cast<hsize_t>(T), static_cast<hsize_t>(r.head_dim)};
    std::vector<float> values;
    for (int l = 0; l < r.layers; ++l)
      for (int h = 0; h < heads; ++h)
        for (int t = 0; t < T; ++t)
          for (int c = 0; c < r.head_dim; ++c) values.push_back(fixture_value(l, h, t, c));
    if (nan) {
      values[5 * r.head_dim + 3] = NAN;  // layer 0, head 0, token 5, channel 3
      values[values.size() - 1] = INFINITY;
    }
    data::Hid space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    data::Hid plist(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    if (!r.chunk.empty() && !rank3) {
      H5Pset_chunk(plist.get(), 4, r.chunk.data());
      if (r.gzip) H5Pset_deflate(plist.get(), 6);
    }
    data::Hid half = data::half_type();
    data::Hid complex_type(H5Tcreate(H5T_COMPOUND, 8), H5Tclose);
    H5Tinsert(complex_type.get(), "r", 0, H5T_NATIVE_FLOAT);
    H5Tinsert(complex_type.get(), "i", 4, H5T_NATIVE_FLOAT);
    const hid_t type = as_int ? H5T_STD_I32LE : as_complex ? complex_type.get() : r.half ? half.get() : H5T_IEEE_F32LE;
    data::Hid set(H5Dcreate2(file.get(), name, type, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT), H5Dclose);
    if (as_int) {
      std::vector<int> ints(values.begin(), values.end());
      H5Dwrite(set.get(), H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, ints.data());
    } else if (as_complex) {
      std::vector<float> pairs(values.size() * 2, 0.0f);
      H5Dwrite(set.get(), complex_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, pairs.data());
    } else if (r.half) {
      std::vector<std::uint16_t> bits;
      for (float v : values) bits.push_back(float_to_half_bits(v));
      H5Dwrite(set.get(), half.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, bits.data());
    } else {
      H5Dwrite(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    }
  };
  if (!r.omit_keys) write("keys", r.kv_heads, r.keys_rank3, r.keys_wrong_len, false, false, false);
  if (!r.omit_values) write("values", r.kv_heads, false, false, r.int_values, r.complex_values, r.nan_at_values);
  if (r.queries) write("queries", r.heads, false, false, false, false, false);
}

// A unique path in the test's temporary folder.
inline std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "kvq_" + std::to_string(::getpid()) + "_" + name;
}

}  // namespace kvq::test
