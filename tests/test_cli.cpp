// The kvq program on good and bad input: exit status 2, one line on stderr naming
// the file, no output left behind; CLI11's usage for unknown flags.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <fstream>
#include <sstream>

#include "core/packed.h"
#include "data/h5.h"
#include "data/kv_dump.h"
#include "dump_fixtures.h"

namespace kvq {
namespace {

struct CliResult {
  int status = -1;
  std::string out, err;
};

CliResult run(const std::string& args) {
  const std::string out = test::temp_path("stdout"), err = test::temp_path("stderr");
  const std::string command = std::string(KVQ_BINARY) + " " + args + " >" + out + " 2>" + err;
  CliResult r;
  const int raw = std::system(command.c_str());
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::stringstream o, e;
  o << std::ifstream(out).rdbuf();
  e << std::ifstream(err).rdbuf();
  r.out = o.str();
  r.err = e.str();
  return r;
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

TEST(Cli, SynthInspectQuantizeEvalOnAGoodDump) {
  const std::string dump = test::temp_path("cli_synth.h5"), out = test::temp_path("cli_q.h5");
  const std::string csv = test::temp_path("cli.csv"), json = test::temp_path("cli.json");
  CliResult r = run("synth " + dump + " --layers 2 --heads 4 --kv-heads 2 --head-dim 64 --seq-len 200 --seed 3");
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("inspect " + dump + " --json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"imbalance_mean\""), std::string::npos);
  EXPECT_NE(r.out.find("\"outlier_ratio_after\""), std::string::npos);
  r = run("inspect " + dump + " --k-rotation random --k-token-scale head");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("token_scale=head and rotation=random"), std::string::npos) << r.out;
  r = run("inspect " + dump + " --k-rotation givens");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("k.rotation: got 'givens', expected one of none, hadamard, random"), std::string::npos) << r.err;
  r = run("quantize " + dump + " " + out + " --preset innerq_hybrid");
  ASSERT_EQ(r.status, 0) << r.err;
  data::DumpReader quantized(out);
  EXPECT_EQ(quantized.info().seq_len, 200);
  r = run("eval " + dump + " --preset fp16,innerq_hybrid --prefill 150 --queries 10 --csv " + csv + " --json " + json);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("innerq_hybrid"), std::string::npos);
  std::stringstream text;
  text << std::ifstream(csv).rdbuf();
  EXPECT_NE(text.str().find("# input_sha256: "), std::string::npos);
  EXPECT_NE(text.str().find("# git_commit: "), std::string::npos);
  // Header + 2 specs x 2 layers x 2 kv heads.
  std::size_t rows = 0;
  std::string line;
  while (std::getline(text, line)) rows += !line.empty() && line[0] != '#';
  EXPECT_EQ(rows, 1u + 8u);
  for (const auto& p : {dump, out, csv, json}) std::remove(p.c_str());
}

// The rotation family runs through eval (omni scales read across the layer's kv heads) and
// quantize (the token scales saved beside the codes).
TEST(Cli, RotationFamilyThroughEvalAndQuantize) {
  const std::string dump = test::temp_path("cli_rot.h5"), out = test::temp_path("cli_rot_q.h5");
  const std::string csv = test::temp_path("cli_rot.csv");
  CliResult r = run("synth " + dump + " --layers 1 --heads 4 --kv-heads 2 --head-dim 64 --seq-len 300 --seed 5");
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("eval " + dump + " --preset oscar,kivi_hadamard,innerq_hadamard,turbo3 --prefill 200 --queries 20 --csv " + csv);
  ASSERT_EQ(r.status, 0) << r.err;
  std::stringstream text;
  text << std::ifstream(csv).rdbuf();
  for (const char* column : {"k.rotation", "k.token_scale", "rotation_seed", "k_imbalance_in", "k_imbalance", "k_outlier"})
    EXPECT_NE(text.str().find(column), std::string::npos) << column;
  EXPECT_NE(text.str().find("oscar,"), std::string::npos);
  EXPECT_NE(text.str().find("turbo3,"), std::string::npos);
  r = run("quantize " + dump + " " + out + " --preset oscar");
  ASSERT_EQ(r.status, 0) << r.err;
  data::Hid file(H5Fopen(out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  EXPECT_GT(H5Lexists(file.get(), "packed/keys/layer0_head1/token_scale", H5P_DEFAULT), 0);
  {
    // Stored codes name the layout they follow.
    data::Hid group(H5Gopen2(file.get(), "packed", H5P_DEFAULT), H5Gclose);
    EXPECT_EQ(data::read_int_attribute(group.get(), "layout_version", out).value_or(-1), packed::kLayoutVersion);
  }
  for (const auto& p : {dump, out, csv}) std::remove(p.c_str());
}

TEST(Cli, BadInputExitsTwoWithOneLineAndNoOutput) {
  const std::string bad = test::temp_path("cli_bad.h5"), out = test::temp_path("cli_out.h5");
  struct Case {
    std::function<void()> make;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[&] { std::remove(bad.c_str()); }, "no such file"},
      {[&] { std::ofstream(bad) << "plain text"; }, "not an HDF5 file"},
      {[&] { test::RawDump r; r.omit_keys = true; test::write_raw_dump(bad, r); }, "missing dataset 'keys'"},
      {[&] { test::RawDump r; r.keys_wrong_len = true; test::write_raw_dump(bad, r); }, "disagrees"},
      {[&] { test::RawDump r; r.int_values = true; test::write_raw_dump(bad, r); }, "integer dtype"},
      {[&] { test::RawDump r; r.attr_heads = 3; test::write_raw_dump(bad, r); }, "must be a multiple"},
      {[&] { test::RawDump r; r.nan_at_values = true; test::write_raw_dump(bad, r); }, "NaN/Inf"},
  };
  for (const auto& c : cases) {
    c.make();
    for (const std::string& command : {"inspect " + bad, "quantize " + bad + " " + out, "eval " + bad}) {
      const CliResult r = run(command);
      EXPECT_EQ(r.status, 2) << command << ": " << r.err;
      EXPECT_EQ(r.err.rfind("kvq: error: ", 0), 0u) << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
      EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
      EXPECT_FALSE(exists(out)) << command;
    }
  }
  std::remove(bad.c_str());
}

TEST(Cli, VersionNamesTheCommitTheBinaryWasBuiltFrom) {
  const std::string head_file = test::temp_path("head");
  if (std::system(("git -C " KVQ_SOURCE_DIR " rev-parse --short=12 HEAD > " + head_file + " 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "no git checkout to compare with";
  }
  std::string head;
  std::ifstream(head_file) >> head;
  const CliResult r = run("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("(" + head), std::string::npos) << r.out << " vs HEAD " << head;
}

TEST(Cli, BadModelOrTextExitsTwo) {
  const std::string bad = test::temp_path("bad.gguf"), out = test::temp_path("never.h5");
  std::ofstream(bad) << "GGUF but not really";
  for (const std::string& command : {"dump --model " + bad + " --out " + out, "ppl --model " + bad + " --preset fp16",
                                     "dump --text /nonexistent/text.txt --out " + out}) {
    const CliResult r = run(command);
    EXPECT_EQ(r.status, 2) << command << ": " << r.err;
    EXPECT_EQ(r.err.rfind("kvq: error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(exists(out));
  }
  std::remove(bad.c_str());
}

TEST(Cli, BadSpecAndUnknownFlags) {
  const std::string dump = test::temp_path("cli_spec.h5");
  ASSERT_EQ(run("synth " + dump + " --layers 1 --seq-len 80").status, 0);
  CliResult r = run("eval " + dump + " --preset innerq_hybrid --v-flush 8");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("v.flush: got 8"), std::string::npos) << r.err;
  r = run("eval " + dump + " --preset kivy");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("did you mean 'kivi'"), std::string::npos) << r.err;
  r = run("eval " + dump + " --no-such-flag");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.status, 2);
  EXPECT_NE((r.err + r.out).find("--no-such-flag"), std::string::npos) << r.err;
  r = run("quantize " + dump);  // missing the output argument
  EXPECT_NE(r.status, 0);
  EXPECT_NE((r.err + r.out).find("out is required"), std::string::npos) << r.err << r.out;
  std::remove(dump.c_str());
}

}  // namespace
}  // namespace kvq
