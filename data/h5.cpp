#include "data/h5.h"

#include "core/error.h"

namespace kvq::data {

std::recursive_mutex& h5_lock() {
  static std::recursive_mutex mutex;
  // HDF5 prints its own error stack by default; kvq reports one line of its own instead.
  static const bool quiet = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)quiet;
  return mutex;
}

Hid half_type() {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return Hid(t, H5Tclose);
}

bool is_half_type(hid_t type) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 2) return false;
  size_t spos, epos, esize, mpos, msize;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(type) == 15 &&
         H5Tget_order(type) == H5T_ORDER_LE;
}

bool has_attribute(hid_t object, const std::string& name) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  return H5Aexists(object, name.c_str()) > 0;
}

std::optional<std::string> read_string_attribute(hid_t object, const std::string& name) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  if (H5Aexists(object, name.c_str()) <= 0) return std::nullopt;
  Hid attr(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose);
  Hid type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING) return std::nullopt;
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) return std::nullopt;
  if (H5Tis_variable_str(type.get()) > 0) {
    Hid mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    char* text = nullptr;
    if (H5Aread(attr.get(), mem.get(), &text) < 0 || text == nullptr) return std::nullopt;
    std::string value(text);
    H5free_memory(text);
    return value;
  }
  const size_t size = H5Tget_size(type.get());
  std::string value(size, '\0');
  if (H5Aread(attr.get(), type.get(), value.data()) < 0) return std::nullopt;
  value.resize(value.find('\0') == std::string::npos ? size : value.find('\0'));
  return value;
}

namespace {
template <typename T>
std::optional<T> read_number(hid_t object, const std::string& name, const std::string& where, hid_t mem_type,
                             bool allow_float) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  if (H5Aexists(object, name.c_str()) <= 0) return std::nullopt;
  Hid attr(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose);
  Hid type(H5Aget_type(attr.get()), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_INTEGER && !(allow_float && cls == H5T_FLOAT)) {
    fail("{}: attribute '{}' must be {}", where, name, allow_float ? "a number" : "an integer");
  }
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) fail("{}: attribute '{}' must be a scalar", where, name);
  T value{};
  if (H5Aread(attr.get(), mem_type, &value) < 0) fail("{}: cannot read attribute '{}'", where, name);
  return value;
}
}  // namespace

std::optional<long long> read_int_attribute(hid_t object, const std::string& name, const std::string& where) {
  return read_number<long long>(object, name, where, H5T_NATIVE_LLONG, false);
}

std::optional<double> read_float_attribute(hid_t object, const std::string& name, const std::string& where) {
  return read_number<double>(object, name, where, H5T_NATIVE_DOUBLE, true);
}

void write_string_attribute(hid_t object, const std::string& name, const std::string& value) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  Hid attr(H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* text = value.c_str();
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), &text) < 0) fail("cannot write attribute '{}'", name);
}

void write_int_attribute(hid_t object, const std::string& name, long long value) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  Hid attr(H5Acreate2(object, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_LLONG, &value) < 0) fail("cannot write attribute '{}'", name);
}

void write_float_attribute(hid_t object, const std::string& name, double value) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  Hid attr(H5Acreate2(object, name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, &value) < 0) fail("cannot write attribute '{}'", name);
}

void write_array(hid_t parent, const std::string& name, hid_t mem_type, const std::vector<hsize_t>& dims,
                 const void* data) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  Hid space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  Hid set(H5Dcreate2(parent, name.c_str(), mem_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  hsize_t total = 1;
  for (hsize_t d : dims) total *= d;
  if (!set.valid() || (total > 0 && H5Dwrite(set.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)) {
    fail("cannot write dataset '{}'", name);
  }
}

Hid create_group(hid_t parent, const std::string& path) {
  std::lock_guard<std::recursive_mutex> lock(h5_lock());
  Hid props(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(props.get(), 1);
  Hid group(H5Gcreate2(parent, path.c_str(), props.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!group.valid()) fail("cannot create group '{}'", path);
  return group;
}

}  // namespace kvq::data
