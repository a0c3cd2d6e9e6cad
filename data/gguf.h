#pragma once
// A GGUF (v2/v3) reader: header, metadata, tensor table, and dequantization of the
// tensor types kvq's model uses (F32, F16, Q4_0, Q4_1, Q8_0). The file is mmapped;
// every read is bounds-checked, so a bad or truncated file gives a kvq::Error
// naming the file and what was wrong, never a crash.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kvq::data {

// ggml tensor types (the numbering of ggml.h).
enum class GgmlType : std::uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8 };

// Block sizes of the supported types: values per block and bytes per block.
//   q4_0: { fp16 d; uint8 qs[16] }        x = (nibble - 8) * d
//   q4_1: { fp16 d; fp16 m; uint8 qs[16] } x = nibble * d + m
//   q8_0: { fp16 d; int8 qs[32] }          x = q * d
// For the 4-bit types byte j holds value j (low nibble) and value j + 16 (high nibble).
struct TypeTraits {
  const char* name;
  std::size_t block_values;
  std::size_t block_bytes;
};
// nullptr for a type kvq cannot dequantize.
const TypeTraits* type_traits(std::uint32_t type);

// Dequantizes n values (a multiple of the block size) of `type` from src.
void dequantize_row(std::uint32_t type, const std::uint8_t* src, float* dst, std::size_t n);

class GgufFile {
 public:
  struct Value {
    std::uint32_t type = 0;           // GGUF value type
    std::string text;                 // strings
    double number = 0;                // numbers and bools
    std::vector<std::string> texts;   // string arrays
    std::vector<double> numbers;      // numeric arrays
  };
  struct Tensor {
    std::string name;
    std::vector<std::uint64_t> dims;  // ne[0] (contiguous) first
    std::uint32_t type = 0;
    std::uint64_t offset = 0;
    std::size_t elements = 0;
    std::size_t bytes = 0;
    const std::uint8_t* data = nullptr;
  };

  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  std::string get_string(const std::string& key) const;
  double get_number(const std::string& key) const;
  const std::vector<std::string>& get_strings(const std::string& key) const;
  const std::vector<double>& get_numbers(const std::string& key) const;

  const std::vector<Tensor>& tensors() const { return tensors_; }
  const Tensor& tensor(const std::string& name) const;
  bool has_tensor(const std::string& name) const;
  // All values of a tensor as fp32; throws for unsupported types.
  std::vector<float> dequantize(const Tensor& tensor) const;

 private:
  const Value& get(const std::string& key, const char* expected) const;
  std::string path_;
  const std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0;
  std::uint32_t version_ = 0;
  std::map<std::string, Value> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace kvq::data
