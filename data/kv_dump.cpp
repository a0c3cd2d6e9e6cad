#include "data/kv_dump.h"

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/half.h"
#include "core/version.h"

namespace kvq::data {

const char* dataset_name(Dataset dataset) {
  switch (dataset) {
    case Dataset::keys: return "keys";
    case Dataset::values: return "values";
    case Dataset::queries: return "queries";
    case Dataset::keys_pre_rope: return "keys_pre_rope";
  }
  return "?";
}

namespace {

const char* shape_names(Dataset d) {
  return d == Dataset::queries ? "[num_layers, num_heads, seq_len, head_dim]"
                               : "[num_layers, num_kv_heads, seq_len, head_dim]";
}

std::string dims_text(const std::vector<hsize_t>& dims) {
  std::string text = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

std::vector<hsize_t> dataset_dims(hid_t set) {
  Hid space(H5Dget_space(set), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0)));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return dims;
}

// Checks the dtype is a float kvq can read; the message names what it found.
void check_float_type(const std::string& path, const char* name, hid_t set) {
  Hid type(H5Dget_type(set), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls == H5T_FLOAT) {
    const size_t size = H5Tget_size(type.get());
    if (size == 4 || size == 8 || is_half_type(type.get())) return;
    fail("{}: dataset '{}': unsupported {}-byte float format, expected float16 or float32", path, name, size);
  }
  const char* what = cls == H5T_INTEGER    ? "integer"
                     : cls == H5T_COMPOUND ? "compound (complex?)"
                     : cls == H5T_STRING   ? "string"
                                           : "non-float";
  fail("{}: dataset '{}': {} dtype, expected float16 or float32", path, name, what);
}

}  // namespace

DumpReader::DumpReader(const std::string& path) : path_(path) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail("{}: no such file", path);
  if (std::filesystem::is_directory(path, ec)) fail("{}: is a directory, expected an HDF5 file", path);
  if (H5Fis_hdf5(path.c_str()) <= 0) fail("{}: not an HDF5 file", path);
  file_ = Hid(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file_.valid()) fail("{}: cannot open: truncated or corrupt HDF5 file", path);
  const hid_t root = file_.get();

  const auto format = read_string_attribute(root, "kvq_format");
  if (format != kFormatName) fail("{}: attribute 'kvq_format' must be \"{}\" (not a kvq KV dump?)", path, kFormatName);
  const auto version = read_int_attribute(root, "format_version", path);
  if (version != kFormatVersion) fail("{}: attribute 'format_version' must be {}", path, kFormatVersion);
  info_.model = read_string_attribute(root, "model").value_or("");
  info_.source = read_string_attribute(root, "source").value_or("");
  if (!has_attribute(root, "model")) fail("{}: missing string attribute 'model'", path);
  if (!has_attribute(root, "source")) fail("{}: missing string attribute 'source'", path);
  auto required_int = [&](const char* name) {
    const auto v = read_int_attribute(root, name, path);
    if (!v) fail("{}: missing integer attribute '{}'", path, name);
    if (*v <= 0 || *v > (1LL << 31) - 1) fail("{}: attribute '{}' must be a positive integer, got {}", path, name, *v);
    return static_cast<int>(*v);
  };
  info_.num_layers = required_int("num_layers");
  info_.num_heads = required_int("num_heads");
  info_.num_kv_heads = required_int("num_kv_heads");
  info_.head_dim = required_int("head_dim");
  info_.seq_len = required_int("seq_len");
  if (info_.num_heads % info_.num_kv_heads != 0) {
    fail("{}: attribute 'num_heads' ({}) must be a multiple of 'num_kv_heads' ({})", path, info_.num_heads,
         info_.num_kv_heads);
  }
  info_.rope_theta = read_float_attribute(root, "rope_theta", path);
  info_.text_sha256 = read_string_attribute(root, "text_sha256");

  auto check_set = [&](Dataset d, bool required) {
    const char* name = dataset_name(d);
    if (H5Lexists(root, name, H5P_DEFAULT) <= 0) {
      if (required) fail("{}: missing dataset '{}'", path, name);
      return false;
    }
    Hid set(H5Dopen2(root, name, H5P_DEFAULT), H5Dclose);
    if (!set.valid()) fail("{}: '{}' is not a dataset", path, name);
    check_float_type(path, name, set.get());
    const auto dims = dataset_dims(set.get());
    const std::vector<hsize_t> expected = {static_cast<hsize_t>(info_.num_layers),
                                           static_cast<hsize_t>(info_.heads_of(d)),
                                           static_cast<hsize_t>(info_.seq_len), static_cast<hsize_t>(info_.head_dim)};
    if (dims.size() != 4) {
      fail("{}: dataset '{}': expected rank 4 {}, got rank {}", path, name, shape_names(d), dims.size());
    }
    if (dims != expected) {
      fail("{}: dataset '{}': shape {} disagrees with the attributes, expected {} {}", path, name, dims_text(dims),
           shape_names(d), dims_text(expected));
    }
    return true;
  };
  check_set(Dataset::keys, true);
  check_set(Dataset::values, true);
  info_.has_queries = check_set(Dataset::queries, false);
  info_.has_keys_pre_rope = check_set(Dataset::keys_pre_rope, false);

  if (H5Lexists(root, "positions", H5P_DEFAULT) > 0) {
    Hid set(H5Dopen2(root, "positions", H5P_DEFAULT), H5Dclose);
    Hid type(H5Dget_type(set.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_INTEGER) fail("{}: dataset 'positions': expected int64", path);
    const auto dims = dataset_dims(set.get());
    if (dims.size() != 1 || dims[0] != static_cast<hsize_t>(info_.seq_len)) {
      fail("{}: dataset 'positions': shape {} disagrees with seq_len {}, expected [seq_len]", path, dims_text(dims),
           info_.seq_len);
    }
    info_.has_positions = true;
  }
}

DatasetLayout DumpReader::layout(Dataset dataset) const {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  DatasetLayout out;
  Hid set(H5Dopen2(file_.get(), dataset_name(dataset), H5P_DEFAULT), H5Dclose);
  if (!set.valid()) return out;
  Hid type(H5Dget_type(set.get()), H5Tclose);
  out.dtype = is_half_type(type.get()) ? "float16" : H5Tget_size(type.get()) == 4 ? "float32" : "float64";
  Hid plist(H5Dget_create_plist(set.get()), H5Pclose);
  if (H5Pget_layout(plist.get()) == H5D_CHUNKED) {
    hsize_t chunk[4];
    const int rank = H5Pget_chunk(plist.get(), 4, chunk);
    out.chunk.assign(chunk, chunk + std::max(rank, 0));
  }
  out.compression = "none";
  const int filters = H5Pget_nfilters(plist.get());
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0, values[8] = {0};
    size_t nvalues = 8;
    char name[64] = {0};
    const H5Z_filter_t id = H5Pget_filter2(plist.get(), static_cast<unsigned>(i), &flags, &nvalues, values,
                                           sizeof name, name, nullptr);
    const std::string one = id == H5Z_FILTER_DEFLATE ? "gzip-" + std::to_string(nvalues ? values[0] : 0)
                            : id == H5Z_FILTER_SHUFFLE ? "shuffle"
                                                       : std::string(name);
    out.compression = (i == 0 ? "" : out.compression + "+") + one;
  }
  return out;
}

void DumpReader::read_slab(Dataset dataset, int layer, int head, std::vector<float>& out) const {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  const char* name = dataset_name(dataset);
  const hsize_t T = static_cast<hsize_t>(info_.seq_len);
  const hsize_t d = static_cast<hsize_t>(info_.head_dim);
  if (!info_.has(dataset)) {
    fail("{}: no dataset '{}' in this dump", path_, name);
  }
  Hid set(H5Dopen2(file_.get(), name, H5P_DEFAULT), H5Dclose);
  Hid space(H5Dget_space(set.get()), H5Sclose);
  const hsize_t start[4] = {static_cast<hsize_t>(layer), static_cast<hsize_t>(head), 0, 0};
  const hsize_t count[4] = {1, 1, T, d};
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
  Hid memspace(H5Screate_simple(4, count, nullptr), H5Sclose);
  out.resize(static_cast<std::size_t>(T * d));
  Hid type(H5Dget_type(set.get()), H5Tclose);
  herr_t status;
  if (is_half_type(type.get())) {
    // HDF5 1.10 has no native half type: read the raw bits and widen them ourselves.
    std::vector<std::uint16_t> bits(out.size());
    status = H5Dread(set.get(), type.get(), memspace.get(), space.get(), H5P_DEFAULT, bits.data());
    for (std::size_t i = 0; i < bits.size(); ++i) out[i] = half_bits_to_float(bits[i]);
  } else {
    status = H5Dread(set.get(), H5T_NATIVE_FLOAT, memspace.get(), space.get(), H5P_DEFAULT, out.data());
  }
  if (status < 0) {
    fail("{}: dataset '{}': cannot read slab [layer {}, head {}] (truncated or corrupt file?)", path_, name, layer,
         head);
  }
}

std::vector<std::int64_t> DumpReader::positions() const {
  std::vector<std::int64_t> out(static_cast<std::size_t>(info_.seq_len));
  if (!info_.has_positions) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::int64_t>(i);
    return out;
  }
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  Hid set(H5Dopen2(file_.get(), "positions", H5P_DEFAULT), H5Dclose);
  if (H5Dread(set.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
    fail("{}: dataset 'positions': cannot read", path_);
  }
  return out;
}

void DumpReader::check_finite() const {
  std::vector<float> slab;
  for (Dataset d : kAllDatasets) {
    if (!info_.has(d)) continue;
    std::size_t bad = 0;
    std::string first;
    for (int l = 0; l < info_.num_layers; ++l) {
      for (int h = 0; h < info_.heads_of(d); ++h) {
        read_slab(d, l, h, slab);
        for (std::size_t i = 0; i < slab.size(); ++i) {
          if (std::isfinite(slab[i])) continue;
          if (bad++ == 0) {
            first = fmt::format("[layer {}, head {}, token {}, channel {}]", l, h, i / info_.head_dim,
                                i % info_.head_dim);
          }
        }
      }
    }
    if (bad) fail("{}: dataset '{}': {} NaN/Inf values, the first at {}", path_, dataset_name(d), bad, first);
  }
}

DumpWriter::DumpWriter(const std::string& path, const DumpInfo& info, const WriteOptions& options)
    : info_(info), options_(options), output_(path) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  if (info.num_layers <= 0 || info.num_heads <= 0 || info.num_kv_heads <= 0 || info.head_dim <= 0 ||
      info.seq_len <= 0 || info.num_heads % info.num_kv_heads != 0) {
    fail("{}: invalid dump shape (layers {}, heads {}, kv heads {}, head_dim {}, seq_len {})", path, info.num_layers,
         info.num_heads, info.num_kv_heads, info.head_dim, info.seq_len);
  }
  file_ = Hid(H5Fcreate(output_.temp_path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (!file_.valid()) fail("{}: cannot create file", path);
  const hid_t root = file_.get();
  write_string_attribute(root, "kvq_format", kFormatName);
  write_int_attribute(root, "format_version", kFormatVersion);
  write_string_attribute(root, "model", info.model);
  write_string_attribute(root, "source", info.source);
  write_int_attribute(root, "num_layers", info.num_layers);
  write_int_attribute(root, "num_heads", info.num_heads);
  write_int_attribute(root, "num_kv_heads", info.num_kv_heads);
  write_int_attribute(root, "head_dim", info.head_dim);
  write_int_attribute(root, "seq_len", info.seq_len);
  if (info.rope_theta) write_float_attribute(root, "rope_theta", *info.rope_theta);
  if (info.text_sha256) write_string_attribute(root, "text_sha256", *info.text_sha256);

  Hid f16 = half_type();
  for (Dataset d : kAllDatasets) {
    if (!info.has(d)) continue;
    const hsize_t dims[4] = {static_cast<hsize_t>(info.num_layers), static_cast<hsize_t>(info.heads_of(d)),
                             static_cast<hsize_t>(info.seq_len), static_cast<hsize_t>(info.head_dim)};
    const hsize_t chunk[4] = {1, 1, dims[2], dims[3]};
    Hid space(H5Screate_simple(4, dims, nullptr), H5Sclose);
    Hid plist(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(plist.get(), 4, chunk);
    if (options.compress) {
      H5Pset_shuffle(plist.get());
      H5Pset_deflate(plist.get(), 4);
    }
    const hid_t file_type = options.fp16 ? f16.get() : H5T_IEEE_F32LE;
    sets_[static_cast<int>(d)] = Hid(
        H5Dcreate2(root, dataset_name(d), file_type, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT), H5Dclose);
    if (!sets_[static_cast<int>(d)].valid()) fail("{}: cannot create dataset '{}'", path, dataset_name(d));
  }
}

DumpWriter::~DumpWriter() {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  for (auto& s : sets_) s.reset();
  file_.reset();
}

hid_t DumpWriter::dataset(Dataset d) const {
  const Hid& set = sets_[static_cast<int>(d)];
  if (!set.valid()) fail("{}: dataset '{}' was not declared in DumpInfo", output_.final_path(), dataset_name(d));
  return set.get();
}

void DumpWriter::write_slab(Dataset d, int layer, int head, const float* data) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  const hid_t set = dataset(d);
  const hsize_t T = static_cast<hsize_t>(info_.seq_len);
  const hsize_t D = static_cast<hsize_t>(info_.head_dim);
  Hid space(H5Dget_space(set), H5Sclose);
  const hsize_t start[4] = {static_cast<hsize_t>(layer), static_cast<hsize_t>(head), 0, 0};
  const hsize_t count[4] = {1, 1, T, D};
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
  Hid memspace(H5Screate_simple(4, count, nullptr), H5Sclose);
  herr_t status;
  if (options_.fp16) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(T * D));
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_half_bits(data[i]);
    Hid f16 = half_type();
    status = H5Dwrite(set, f16.get(), memspace.get(), space.get(), H5P_DEFAULT, bits.data());
  } else {
    status = H5Dwrite(set, H5T_NATIVE_FLOAT, memspace.get(), space.get(), H5P_DEFAULT, data);
  }
  if (status < 0) fail("{}: cannot write dataset '{}'", output_.final_path(), dataset_name(d));
}

void DumpWriter::write_positions(const std::vector<std::int64_t>& positions) {
  if (positions.size() != static_cast<std::size_t>(info_.seq_len)) fail("internal: positions size mismatch");
  write_array(file_.get(), "positions", H5T_NATIVE_INT64, {positions.size()}, positions.data());
}

void DumpWriter::write_provenance(const std::string& command) {
  write_string_attribute(file_.get(), "kvq_version", kVersion);
  write_string_attribute(file_.get(), "git_commit", kGitCommit);
  write_string_attribute(file_.get(), "command", command);
}

void DumpWriter::commit() {
  {
    std::lock_guard<std::recursive_mutex> lock(h5_lock());
    for (auto& s : sets_) s.reset();
    if (H5Fflush(file_.get(), H5F_SCOPE_GLOBAL) < 0) fail("{}: flush failed", output_.final_path());
    file_.reset();
  }
  output_.commit();
}

}  // namespace kvq::data
