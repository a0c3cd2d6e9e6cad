#include "data/gguf.h"

#include <cstring>
#include <limits>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/half.h"

namespace kvq::data {

namespace {
constexpr TypeTraits kF32{"F32", 1, 4};
constexpr TypeTraits kF16{"F16", 1, 2};
constexpr TypeTraits kQ4_0{"Q4_0", 32, 18};
constexpr TypeTraits kQ4_1{"Q4_1", 32, 20};
constexpr TypeTraits kQ8_0{"Q8_0", 32, 34};

enum : std::uint32_t {
  kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32v, kBool, kString, kArray, kU64, kI64, kF64v
};

// Sequential reader over the mapped bytes; every read checks the remaining size.
class Cursor {
 public:
  Cursor(const std::string& path, const std::uint8_t* data, std::size_t size) : path_(path), data_(data), size_(size) {}
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const auto n = read<std::uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  void need(std::uint64_t n, const char* what) const {
    if (n > size_ - pos_) fail("{}: truncated GGUF file: {} runs past the end (offset {})", path_, what, pos_);
  }
  std::size_t pos() const { return pos_; }

 private:
  const std::string& path_;
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

double scalar(Cursor& c, std::uint32_t type, const std::string& path, const std::string& key) {
  switch (type) {
    case kU8: return c.read<std::uint8_t>("value");
    case kI8: return c.read<std::int8_t>("value");
    case kU16: return c.read<std::uint16_t>("value");
    case kI16: return c.read<std::int16_t>("value");
    case kU32: return c.read<std::uint32_t>("value");
    case kI32: return c.read<std::int32_t>("value");
    case kF32v: return c.read<float>("value");
    case kBool: return c.read<std::uint8_t>("value") != 0;
    case kU64: return static_cast<double>(c.read<std::uint64_t>("value"));
    case kI64: return static_cast<double>(c.read<std::int64_t>("value"));
    case kF64v: return c.read<double>("value");
    default: fail("{}: metadata '{}' has unknown value type {}", path, key, type);
  }
}

std::size_t scalar_size(std::uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32v: return 4;
    case kU64: case kI64: case kF64v: return 8;
    default: return 0;
  }
}
}  // namespace

const TypeTraits* type_traits(std::uint32_t type) {
  switch (type) {
    case 0: return &kF32;
    case 1: return &kF16;
    case 2: return &kQ4_0;
    case 3: return &kQ4_1;
    case 8: return &kQ8_0;
    default: return nullptr;
  }
}

void dequantize_row(std::uint32_t type, const std::uint8_t* src, float* dst, std::size_t n) {
  auto half = [](const std::uint8_t* p) {
    std::uint16_t bits;
    std::memcpy(&bits, p, 2);
    return half_bits_to_float(bits);
  };
  switch (type) {
    case 0: std::memcpy(dst, src, n * 4); return;
    case 1:
      for (std::size_t i = 0; i < n; ++i) dst[i] = half(src + 2 * i);
      return;
    case 2:
      for (std::size_t b = 0; b < n / 32; ++b, src += 18, dst += 32) {
        const float d = half(src);
        for (int j = 0; j < 16; ++j) {
          dst[j] = static_cast<float>((src[2 + j] & 0x0f) - 8) * d;
          dst[j + 16] = static_cast<float>((src[2 + j] >> 4) - 8) * d;
        }
      }
      return;
    case 3:
      for (std::size_t b = 0; b < n / 32; ++b, src += 20, dst += 32) {
        const float d = half(src), m = half(src + 2);
        for (int j = 0; j < 16; ++j) {
          dst[j] = static_cast<float>(src[4 + j] & 0x0f) * d + m;
          dst[j + 16] = static_cast<float>(src[4 + j] >> 4) * d + m;
        }
      }
      return;
    case 8:
      for (std::size_t b = 0; b < n / 32; ++b, src += 34, dst += 32) {
        const float d = half(src);
        for (int j = 0; j < 32; ++j) dst[j] = static_cast<float>(static_cast<std::int8_t>(src[2 + j])) * d;
      }
      return;
    default: fail("GGUF tensor type {} is not supported", type);
  }
}

GgufFile::GgufFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open (no such file?)", path);
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ < 24) {
    ::close(fd);
    fail("{}: not a GGUF file (too short)", path);
  }
  void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapped == MAP_FAILED) fail("{}: cannot map the file", path);
  base_ = static_cast<const std::uint8_t*>(mapped);
  try {
    Cursor c(path_, base_, size_);
    if (std::memcmp(base_, "GGUF", 4) != 0) fail("{}: not a GGUF file (bad magic)", path);
    c.read<std::uint32_t>("magic");
    version_ = c.read<std::uint32_t>("version");
    if (version_ != 2 && version_ != 3) fail("{}: GGUF version {} is not supported (expected 2 or 3)", path, version_);
    const auto n_tensors = c.read<std::uint64_t>("tensor count");
    const auto n_kv = c.read<std::uint64_t>("metadata count");
    // Each entry takes at least 8 bytes: counts beyond the file are corrupt, not huge.
    if (n_tensors > size_ / 8 || n_kv > size_ / 8) fail("{}: corrupt GGUF header (counts exceed the file)", path);
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      const std::string key = c.string("metadata key");
      Value v;
      v.type = c.read<std::uint32_t>("metadata type");
      if (v.type == kString) {
        v.text = c.string("string value");
      } else if (v.type == kArray) {
        const auto element = c.read<std::uint32_t>("array type");
        const auto n = c.read<std::uint64_t>("array length");
        if (element == kString) {
          if (n > size_ / 8) fail("{}: metadata '{}': array length {} exceeds the file", path, key, n);
          v.texts.reserve(static_cast<std::size_t>(n));
          for (std::uint64_t j = 0; j < n; ++j) v.texts.push_back(c.string("array string"));
        } else {
          const std::size_t width = scalar_size(element);
          if (width == 0) fail("{}: metadata '{}': unsupported array element type {}", path, key, element);
          c.need(n * width, "array data");
          v.numbers.reserve(static_cast<std::size_t>(n));
          for (std::uint64_t j = 0; j < n; ++j) v.numbers.push_back(scalar(c, element, path, key));
        }
      } else {
        v.number = scalar(c, v.type, path, key);
      }
      metadata_[key] = std::move(v);
    }
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      Tensor t;
      t.name = c.string("tensor name");
      const auto n_dims = c.read<std::uint32_t>("tensor rank");
      if (n_dims == 0 || n_dims > 4) fail("{}: tensor '{}': rank {} (expected 1 to 4)", path, t.name, n_dims);
      t.elements = 1;
      for (std::uint32_t d = 0; d < n_dims; ++d) {
        const auto dim = c.read<std::uint64_t>("tensor dimension");
        if (dim == 0 || dim > (std::uint64_t{1} << 40) || t.elements > (std::size_t{1} << 40) / dim) {
          fail("{}: tensor '{}': bad dimension {}", path, t.name, dim);
        }
        t.dims.push_back(dim);
        t.elements *= static_cast<std::size_t>(dim);
      }
      t.type = c.read<std::uint32_t>("tensor type");
      t.offset = c.read<std::uint64_t>("tensor offset");
      tensors_.push_back(std::move(t));
    }
    std::size_t alignment = 32;
    if (has("general.alignment")) {
      const double a = get_number("general.alignment");
      if (a < 1 || a > 65536) fail("{}: bad general.alignment {}", path, a);
      alignment = static_cast<std::size_t>(a);
    }
    const std::size_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
    for (auto& t : tensors_) {
      if (const TypeTraits* traits = type_traits(t.type)) {
        if (t.dims[0] % traits->block_values != 0) {
          fail("{}: tensor '{}': row of {} values is not a whole number of {} blocks", path, t.name, t.dims[0],
               traits->name);
        }
        t.bytes = t.elements / traits->block_values * traits->block_bytes;
      }
      if (t.offset > size_ || data_start > size_ - t.offset || t.bytes > size_ - data_start - t.offset) {
        fail("{}: truncated GGUF file: tensor '{}' data runs past the end", path, t.name);
      }
      t.data = base_ + data_start + t.offset;
    }
  } catch (...) {
    ::munmap(const_cast<std::uint8_t*>(base_), size_);
    base_ = nullptr;
    throw;
  }
}

GgufFile::~GgufFile() {
  if (base_) ::munmap(const_cast<std::uint8_t*>(base_), size_);
}

const GgufFile::Value& GgufFile::get(const std::string& key, const char* expected) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) fail("{}: missing metadata '{}' ({})", path_, key, expected);
  return it->second;
}

std::string GgufFile::get_string(const std::string& key) const {
  const Value& v = get(key, "a string");
  if (v.type != kString) fail("{}: metadata '{}' must be a string", path_, key);
  return v.text;
}

double GgufFile::get_number(const std::string& key) const {
  const Value& v = get(key, "a number");
  if (v.type == kString || v.type == kArray) fail("{}: metadata '{}' must be a number", path_, key);
  return v.number;
}

const std::vector<std::string>& GgufFile::get_strings(const std::string& key) const {
  const Value& v = get(key, "a string array");
  if (v.type != kArray || (v.texts.empty() && !v.numbers.empty())) fail("{}: metadata '{}' must be a string array", path_, key);
  return v.texts;
}

const std::vector<double>& GgufFile::get_numbers(const std::string& key) const {
  const Value& v = get(key, "a numeric array");
  if (v.type != kArray || (v.numbers.empty() && !v.texts.empty())) fail("{}: metadata '{}' must be a numeric array", path_, key);
  return v.numbers;
}

bool GgufFile::has_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return true;
  return false;
}

const GgufFile::Tensor& GgufFile::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  fail("{}: missing tensor '{}'", path_, name);
}

std::vector<float> GgufFile::dequantize(const Tensor& t) const {
  if (!type_traits(t.type)) fail("{}: tensor '{}' has type {}, which kvq cannot dequantize", path_, t.name, t.type);
  std::vector<float> out(t.elements);
  dequantize_row(t.type, t.data, out.data(), t.elements);
  return out;
}

}  // namespace kvq::data
