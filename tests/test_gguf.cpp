// The GGUF reader on small files made here: metadata of every kind, each block type
// dequantized against values worked out by hand, and corrupt or truncated files.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "data/gguf.h"

namespace kvq {
namespace {

// Builds a GGUF v3 file byte by byte.
class GgufBuilder {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    meta_.insert(meta_.end(), p, p + sizeof v);
  }
  void str(const std::string& s) {
    put<std::uint64_t>(s.size());
    meta_.insert(meta_.end(), s.begin(), s.end());
  }
  void kv_string(const std::string& k, const std::string& v) { str(k), put<std::uint32_t>(8), str(v), ++kv_; }
  void kv_u32(const std::string& k, std::uint32_t v) { str(k), put<std::uint32_t>(4), put(v), ++kv_; }
  void kv_f32(const std::string& k, float v) { str(k), put<std::uint32_t>(6), put(v), ++kv_; }
  void kv_strings(const std::string& k, const std::vector<std::string>& v) {
    str(k), put<std::uint32_t>(9), put<std::uint32_t>(8), put<std::uint64_t>(v.size());
    for (const auto& s : v) str(s);
    ++kv_;
  }
  void kv_i32s(const std::string& k, const std::vector<std::int32_t>& v) {
    str(k), put<std::uint32_t>(9), put<std::uint32_t>(5), put<std::uint64_t>(v.size());
    for (auto x : v) put(x);
    ++kv_;
  }
  void tensor(const std::string& name, std::vector<std::uint64_t> dims, std::uint32_t type, std::vector<std::uint8_t> bytes) {
    tensors_.push_back({name, dims, type, data_.size()});
    data_.insert(data_.end(), bytes.begin(), bytes.end());
    while (data_.size() % 32) data_.push_back(0);
  }
  std::vector<char> bytes() const {
    std::vector<char> out = {'G', 'G', 'U', 'F'};
    auto put_to = [&](auto v) {
      const auto* p = reinterpret_cast<const char*>(&v);
      out.insert(out.end(), p, p + sizeof v);
    };
    put_to(std::uint32_t{3});
    put_to(std::uint64_t{tensors_.size()});
    put_to(std::uint64_t{kv_});
    out.insert(out.end(), meta_.begin(), meta_.end());
    for (const auto& t : tensors_) {
      put_to(std::uint64_t{t.name.size()});
      out.insert(out.end(), t.name.begin(), t.name.end());
      put_to(static_cast<std::uint32_t>(t.dims.size()));
      for (auto d : t.dims) put_to(d);
      put_to(t.type);
      put_to(std::uint64_t{t.offset});
    }
    while (out.size() % 32) out.push_back(0);
    out.insert(out.end(), data_.begin(), data_.end());
    return out;
  }

 private:
  struct T {
    std::string name;
    std::vector<std::uint64_t> dims;
    std::uint32_t type;
    std::size_t offset;
  };
  std::vector<char> meta_;
  std::vector<std::uint8_t> data_;
  std::vector<T> tensors_;
  std::uint64_t kv_ = 0;
};

std::string write(const std::vector<char>& bytes, const std::string& name) {
  const std::string path = ::testing::TempDir() + "kvq_" + std::to_string(::getpid()) + "_" + name;
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

void half_le(std::vector<std::uint8_t>& out, float v) {
  const std::uint16_t h = float_to_half_bits(v);
  out.push_back(static_cast<std::uint8_t>(h & 0xff));
  out.push_back(static_cast<std::uint8_t>(h >> 8));
}

GgufBuilder sample() {
  GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.kv_u32("llama.block_count", 2);
  b.kv_f32("llama.rope.freq_base", 100000.0f);
  b.kv_strings("tokenizer.ggml.tokens", {"a", "b", "ab"});
  b.kv_i32s("tokenizer.ggml.token_type", {1, 1, 3});
  // F32: 2 values.
  std::vector<std::uint8_t> f32(8);
  const float f32v[2] = {1.5f, -2.25f};
  std::memcpy(f32.data(), f32v, 8);
  b.tensor("f32", {2}, 0, f32);
  // F16: 2 values.
  std::vector<std::uint8_t> f16;
  half_le(f16, 0.5f), half_le(f16, -3.0f);
  b.tensor("f16", {2}, 1, f16);
  // Q4_0, d = 0.5: byte j = (j+1 high nibble, j low nibble) -> x[j] = (j - 8) * 0.5, x[j+16] = (j + 1 - 8) * 0.5.
  std::vector<std::uint8_t> q40;
  half_le(q40, 0.5f);
  for (int j = 0; j < 16; ++j) q40.push_back(static_cast<std::uint8_t>(j | ((j + 1) & 15) << 4));
  b.tensor("q4_0", {32}, 2, q40);
  // Q4_1, d = 0.25, m = -1: x[j] = (15 - j) * 0.25 - 1, x[j+16] = (j % 4) * 0.25 - 1.
  std::vector<std::uint8_t> q41;
  half_le(q41, 0.25f), half_le(q41, -1.0f);
  for (int j = 0; j < 16; ++j) q41.push_back(static_cast<std::uint8_t>((15 - j) | (j % 4) << 4));
  b.tensor("q4_1", {32}, 3, q41);
  // Q8_0, d = 2: x[j] = (j - 16) * 2.
  std::vector<std::uint8_t> q80;
  half_le(q80, 2.0f);
  for (int j = 0; j < 32; ++j) q80.push_back(static_cast<std::uint8_t>(static_cast<std::int8_t>(j - 16)));
  b.tensor("q8_0", {32, 1}, 8, q80);
  return b;
}

TEST(Gguf, ReadsMetadataAndDequantizesEveryTypeByHand) {
  const std::string path = write(sample().bytes(), "sample.gguf");
  data::GgufFile g(path);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_number("llama.block_count"), 2);
  EXPECT_EQ(g.get_number("llama.rope.freq_base"), 100000.0);
  EXPECT_EQ(g.get_strings("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "b", "ab"}));
  EXPECT_EQ(g.get_numbers("tokenizer.ggml.token_type"), (std::vector<double>{1, 1, 3}));
  EXPECT_EQ(g.dequantize(g.tensor("f32")), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(g.dequantize(g.tensor("f16")), (std::vector<float>{0.5f, -3.0f}));
  const auto q40 = g.dequantize(g.tensor("q4_0"));
  const auto q41 = g.dequantize(g.tensor("q4_1"));
  const auto q80 = g.dequantize(g.tensor("q8_0"));
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(q40[j], (j - 8) * 0.5f);
    EXPECT_EQ(q40[j + 16], (((j + 1) & 15) - 8) * 0.5f);
    EXPECT_EQ(q41[j], (15 - j) * 0.25f - 1.0f);
    EXPECT_EQ(q41[j + 16], (j % 4) * 0.25f - 1.0f);
  }
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q80[j], (j - 16) * 2.0f);
  try {
    g.get_string("llama.block_count");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be a string"), std::string::npos);
  }
  std::remove(path.c_str());
}

TEST(Gguf, EveryTruncationIsAClearErrorNeverACrash) {
  const auto bytes = sample().bytes();
  for (std::size_t n = 0; n < bytes.size(); n += (n < 200 ? 1 : 7)) {
    const std::string path = write(std::vector<char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)), "cut.gguf");
    try {
      data::GgufFile g(path);
      // A cut inside the padding after the last tensor can still be a readable file.
      for (const auto& t : g.tensors()) g.dequantize(t);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(path), std::string::npos) << m;
      EXPECT_TRUE(m.find("truncated") != std::string::npos || m.find("not a GGUF") != std::string::npos ||
                  m.find("corrupt") != std::string::npos || m.find("exceeds") != std::string::npos)
          << n << ": " << m;
    }
    std::remove(path.c_str());
  }
}

TEST(Gguf, CorruptFilesAreRejected) {
  auto expect = [](std::vector<char> bytes, const std::string& needle) {
    const std::string path = write(bytes, "bad.gguf");
    try {
      data::GgufFile g(path);
      for (const auto& t : g.tensors()) g.dequantize(t);
      ADD_FAILURE() << "accepted; expected " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    std::remove(path.c_str());
  };
  auto bytes = sample().bytes();
  auto bad = bytes;
  bad[0] = 'X';
  expect(bad, "bad magic");
  bad = bytes;
  bad[4] = 9;
  expect(bad, "version 9");
  bad = bytes;
  bad[8] = static_cast<char>(0xff), bad[15] = 0x7f;  // absurd tensor count
  expect(bad, "corrupt GGUF header");
  GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  std::vector<std::uint8_t> block(34, 0);
  b.tensor("q8_0", {31}, 8, block);  // a row that is not whole blocks
  expect(b.bytes(), "not a whole number");
  GgufBuilder u;
  u.tensor("q6_k", {256}, 14, std::vector<std::uint8_t>(210, 0));
  expect(u.bytes(), "cannot dequantize");
  expect({'G', 'G', 'U'}, "not a GGUF file");
}

}  // namespace
}  // namespace kvq
