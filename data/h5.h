#pragma once
// Thin RAII and helpers over the HDF5 C API, used by data/ only. The Debian
// HDF5 build is not thread-safe, so every call goes through h5_lock().
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <hdf5.h>

namespace kvq::data {

std::recursive_mutex& h5_lock();

// Owns one HDF5 identifier and closes it with the matching H5*close.
class Hid {
 public:
  using Closer = herr_t (*)(hid_t);
  Hid() = default;
  Hid(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Hid() { reset(); }
  Hid(Hid&& other) noexcept : id_(other.id_), closer_(other.closer_) { other.id_ = -1; }
  Hid& operator=(Hid&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = other.id_;
      closer_ = other.closer_;
      other.id_ = -1;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

// The IEEE binary16 type as h5py writes it ('<f2').
Hid half_type();
// True when the file type is IEEE binary16, little-endian.
bool is_half_type(hid_t type);

bool has_attribute(hid_t object, const std::string& name);
std::optional<std::string> read_string_attribute(hid_t object, const std::string& name);
// nullopt if absent; throws kvq::Error naming `where` if present but not an integer/float.
std::optional<long long> read_int_attribute(hid_t object, const std::string& name, const std::string& where);
std::optional<double> read_float_attribute(hid_t object, const std::string& name, const std::string& where);

void write_string_attribute(hid_t object, const std::string& name, const std::string& value);
void write_int_attribute(hid_t object, const std::string& name, long long value);
void write_float_attribute(hid_t object, const std::string& name, double value);

// Writes a whole contiguous dataset of native type `mem_type` (gzip-free, small arrays).
void write_array(hid_t parent, const std::string& name, hid_t mem_type, const std::vector<hsize_t>& dims,
                 const void* data);

// Creates a group (and missing parents).
Hid create_group(hid_t parent, const std::string& path);

}  // namespace kvq::data
