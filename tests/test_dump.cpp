// The KV-dump format: round trips through kvq's writer, files with other layouts
// written through the raw HDF5 API or by h5py, and every malformed input.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/kv_dump.h"
#include "dump_fixtures.h"

namespace kvq {
namespace {

void expect_error(const std::function<void()>& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
    for (const auto& n : needles) EXPECT_NE(message.find(n), std::string::npos) << message << " lacks " << n;
  }
}

TEST(DumpFormat, WriterRoundTripsFloat32AndFloat16WithAndWithoutGzip) {
  for (bool fp16 : {false, true}) {
    for (bool gzip : {false, true}) {
      const std::string path = test::temp_path(fmt::format("rt_{}_{}.h5", fp16, gzip));
      data::DumpInfo info;
      info.num_layers = 2;
      info.num_heads = 6;
      info.num_kv_heads = 3;
      info.head_dim = 16;
      info.seq_len = 29;
      info.has_queries = true;
      info.rope_theta = 500000.0;
      info.text_sha256 = "abc";
      {
        data::DumpWriter writer(path, info, {fp16, gzip});
        std::vector<float> slab(29 * 16);
        for (auto d : {data::Dataset::keys, data::Dataset::values, data::Dataset::queries})
          for (int l = 0; l < 2; ++l)
            for (int h = 0; h < info.heads_of(d); ++h) {
              for (int i = 0; i < 29 * 16; ++i) slab[i] = test::fixture_value(l, h + 10 * static_cast<int>(d), i / 16, i % 16);
              writer.write_slab(d, l, h, slab.data());
            }
        writer.commit();
      }
      data::DumpReader reader(path);
      EXPECT_EQ(reader.info().num_heads, 6);
      EXPECT_EQ(reader.info().rope_theta.value(), 500000.0);
      EXPECT_EQ(reader.info().text_sha256.value(), "abc");
      EXPECT_EQ(reader.layout(data::Dataset::keys).dtype, fp16 ? "float16" : "float32");
      EXPECT_EQ(reader.layout(data::Dataset::keys).chunk, (std::vector<unsigned long long>{1, 1, 29, 16}));
      std::vector<float> slab;
      for (auto d : {data::Dataset::keys, data::Dataset::values, data::Dataset::queries})
        for (int l = 0; l < 2; ++l)
          for (int h = 0; h < info.heads_of(d); ++h) {
            reader.read_slab(d, l, h, slab);
            for (int i = 0; i < 29 * 16; ++i) {
              const float want = test::fixture_value(l, h + 10 * static_cast<int>(d), i / 16, i % 16);
              ASSERT_EQ(slab[i], fp16 ? round_to_half(want) : want);
            }
          }
      EXPECT_EQ(reader.positions()[28], 28);
      std::remove(path.c_str());
    }
  }
}

TEST(DumpFormat, ReadsAnyChunkingCompressionAndDtype) {
  const std::vector<std::vector<hsize_t>> chunkings = {{}, {1, 1, 7, 32}, {2, 1, 37, 32}, {1, 2, 5, 8}};
  for (const auto& chunk : chunkings) {
    for (bool half : {false, true}) {
      test::RawDump r;
      r.chunk = chunk;
      r.gzip = !chunk.empty();
      r.half = half;
      const std::string path = test::temp_path("layout.h5");
      test::write_raw_dump(path, r);
      data::DumpReader reader(path);
      EXPECT_EQ(reader.layout(data::Dataset::values).chunk.size(), chunk.size());
      std::vector<float> slab;
      for (int l = 0; l < r.layers; ++l)
        for (int h = 0; h < r.heads; ++h) {
          reader.read_slab(data::Dataset::queries, l, h, slab);
          for (int t = 0; t < r.seq_len; ++t)
            for (int c = 0; c < r.head_dim; ++c) {
              const float want = test::fixture_value(l, h, t, c);
              ASSERT_EQ(slab[static_cast<std::size_t>(t) * r.head_dim + c], half ? round_to_half(want) : want);
            }
        }
      EXPECT_NO_THROW(reader.check_finite());
      std::remove(path.c_str());
    }
  }
}

TEST(DumpFormat, ReadsAFileWrittenByH5py) {
  const std::string python = KVQ_TEST_PYTHON;
  if (std::system((python + " -c 'import h5py, numpy' 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << python << " has no h5py (scripts/setup.sh installs it into .venv)";
  }
  const std::string path = test::temp_path("h5py.h5");
  const std::string script = test::temp_path("write.py");
  std::ofstream(script) << "import sys, h5py, numpy as np\n"
                           "L, H, K, T, D = 2, 4, 2, 11, 32\n"
                           "def vals(h):\n"
                           "    l, hh, t, c = np.meshgrid(np.arange(L), np.arange(h), np.arange(T), np.arange(D), indexing='ij')\n"
                           "    return (np.sin(np.float32(0.7)*l + np.float32(1.3)*hh + np.float32(0.01)*t*(c+1)) * (1 + np.float32(0.1)*c)).astype(np.float32)\n"
                           "with h5py.File(sys.argv[1], 'w') as f:\n"
                           "    f.create_dataset('keys', data=vals(K).astype(np.float16), chunks=(1, 1, 5, D), compression='gzip')\n"
                           "    f.create_dataset('values', data=vals(K))\n"
                           "    f.create_dataset('queries', data=vals(H), chunks=True)\n"
                           "    f.create_dataset('positions', data=np.arange(T, dtype=np.int64))\n"
                           "    f.attrs.update(kvq_format='kvq-kv-dump', format_version=1, model='h5py', source='synthetic',\n"
                           "                   num_layers=L, num_heads=H, num_kv_heads=K, head_dim=D, seq_len=T, rope_theta=10000.0)\n";
  ASSERT_EQ(std::system((python + " " + script + " " + path).c_str()), 0);
  data::DumpReader reader(path);
  EXPECT_EQ(reader.info().model, "h5py");
  EXPECT_EQ(reader.layout(data::Dataset::keys).dtype, "float16");
  std::vector<float> slab;
  reader.read_slab(data::Dataset::keys, 1, 1, slab);
  reader.read_slab(data::Dataset::values, 1, 1, slab);
  // numpy evaluates sin in float32; allow its last-bit differences from the C++ fixture.
  for (int t = 0; t < 11; ++t)
    for (int c = 0; c < 32; ++c) EXPECT_NEAR(slab[t * 32 + c], test::fixture_value(1, 1, t, c), 1e-5);
  reader.read_slab(data::Dataset::keys, 1, 1, slab);
  for (int t = 0; t < 11; ++t)
    for (int c = 0; c < 32; ++c) EXPECT_NEAR(slab[t * 32 + c], test::fixture_value(1, 1, t, c), 4e-3);  // fp16
  std::remove(path.c_str());
  std::remove(script.c_str());
}

TEST(DumpFormat, MalformedInputsGetOneClearLine) {
  const std::string path = test::temp_path("bad.h5");
  auto check = [&](const test::RawDump& r, std::initializer_list<std::string> needles) {
    test::write_raw_dump(path, r);
    expect_error([&] { data::DumpReader reader(path); reader.check_finite(); }, needles);
  };
  test::RawDump r;
  r.omit_keys = true;
  check(r, {path, "missing dataset 'keys'"});
  r = {};
  r.omit_values = true;
  check(r, {path, "missing dataset 'values'"});
  r = {};
  r.keys_rank3 = true;
  check(r, {path, "'keys'", "expected rank 4", "got rank 3"});
  r = {};
  r.keys_wrong_len = true;
  check(r, {path, "'keys'", "shape [2, 2, 38, 32] disagrees"});
  r = {};
  r.int_values = true;
  check(r, {path, "'values'", "integer dtype, expected float16 or float32"});
  r = {};
  r.complex_values = true;
  check(r, {path, "'values'", "compound (complex?) dtype"});
  r = {};
  r.attr_heads = 3;
  check(r, {path, "'num_heads' (3) must be a multiple of 'num_kv_heads' (2)"});
  r = {};
  r.omit_attr = "head_dim";
  check(r, {path, "missing integer attribute 'head_dim'"});
  r = {};
  r.nan_at_values = true;
  check(r, {path, "'values'", "2 NaN/Inf values", "[layer 0, head 0, token 5, channel 3]"});

  expect_error([&] { data::DumpReader reader(test::temp_path("does_not_exist.h5")); }, {"does_not_exist.h5", "no such file"});
  std::ofstream(path) << "not an HDF5 file at all\n";
  expect_error([&] { data::DumpReader reader(path); }, {path, "not an HDF5 file"});
  // Truncated: a valid dump cut in half.
  test::write_raw_dump(path, {});
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  expect_error([&] { data::DumpReader reader(path); reader.check_finite(); }, {path, "truncated"});
  std::remove(path.c_str());
}

TEST(DumpFormat, WriterLeavesNothingBehindWhenNotCommitted) {
  const std::string path = test::temp_path("aborted.h5");
  {
    data::DumpInfo info;
    info.num_layers = info.num_heads = info.num_kv_heads = 1;
    info.head_dim = 8;
    info.seq_len = 4;
    data::DumpWriter writer(path, info, {});
  }
  EXPECT_FALSE(std::ifstream(path).good());
  for (const auto& entry : std::filesystem::directory_iterator(::testing::TempDir()))
    EXPECT_EQ(entry.path().string().find("aborted.h5.tmp"), std::string::npos);
}

}  // namespace
}  // namespace kvq
