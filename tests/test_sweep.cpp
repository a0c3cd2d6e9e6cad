// Sweeps: grid expansion, include/exclude, config errors, determinism across threads,
// resume after a real kill -9, MPI ranks and shards equal to one process.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "ablations/sweep.h"
#include "ablations/sweep_config.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace kvq {
namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "kvq_sweep_" + std::to_string(::getpid()) + "_" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read(const std::string& path) {
  std::stringstream s;
  s << std::ifstream(path).rdbuf();
  return s.str();
}

void expect_error(const std::string& text, std::initializer_list<std::string> needles) {
  try {
    ablations::parse_sweep_config(text, "cfg.yaml");
    ADD_FAILURE() << "accepted:\n" << text;
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(SweepConfig, ExpandsGridsDedupesAndAppliesRules) {
  const auto c = ablations::parse_sweep_config(R"(
inputs: [a.h5]
base: innerq_hybrid
ablations:
  bits:
    axes:
      k.bits: [2, 3]
      v.bits: [2, 4]
  modes:
    axes:
      v.mode: [hybrid, sym]
  explicit:
    configs:
      - {preset: kivi}
      - {k.group_axis: outer, k.flush: 32}
exclude:
  - {k.bits: 2, v.bits: 4}
include:
  - {preset: q8_0}
output: out
)", "cfg.yaml");
  // bits: 4 combinations minus the excluded one; modes: hybrid (already there as k3/v2) and sym; explicit: 2; include: 1.
  std::vector<std::string> labels;
  for (const auto& e : c.entries) labels.push_back(label(e.spec) + ":" + e.ablations.front());
  ASSERT_EQ(c.entries.size(), 3u + 1u + 2u + 1u) << ::testing::PrintToString(labels);
  EXPECT_EQ(c.entries[0].spec.k.bits, 2);
  EXPECT_EQ(c.entries[0].spec.v.bits, 2);
  EXPECT_EQ(c.entries[1].spec.k.bits, 3);  // first axis varies slowest; (2, 4) excluded
  EXPECT_EQ(c.entries[1].spec.v.bits, 2);
  EXPECT_EQ(c.entries[1].ablations, (std::vector<std::string>{"bits", "modes"}));  // the base, shared
  EXPECT_EQ(c.entries[3].spec.v.mode, Mode::sym);
  EXPECT_EQ(label(c.entries[4].spec), "kivi");
  EXPECT_EQ(c.entries[5].spec.k.group_axis, GroupAxis::token);
  EXPECT_EQ(label(c.entries[6].spec), "q8_0");
  EXPECT_EQ(c.entries[6].ablations.front(), "include");
  EXPECT_EQ(c.output, "out");
  EXPECT_EQ(c.queries, 64);
}

TEST(SweepConfig, ErrorsNameFileLineKeyAndSuggest) {
  expect_error("inputs: [a.h5]\nablatons: {}\n", {"cfg.yaml:2:", "unknown key 'ablatons'", "did you mean 'ablations'"});
  expect_error("inputs: [a.h5]\nablations:\n  x:\n    axes:\n      v.bitz: [2]\n", {"cfg.yaml:5:", "'v.bitz'", "did you mean 'v.bits'"});
  expect_error("inputs: [a.h5]\nablations:\n  x:\n    axes:\n      v.mode: [hybird]\n", {"cfg.yaml:5:", "v.mode: got 'hybird'"});
  expect_error("inputs: [a.h5]\nqueries: many\nablations: {x: {axes: {bits: [2]}}}\n", {"cfg.yaml:2:", "queries: got 'many', expected an integer"});
  expect_error("inputs: [a.h5]\nablations:\n  x:\n    configs:\n      - {k.group_axis: outer}\n",
               {"cfg.yaml:5:", "k.flush: got 1, expected a multiple of k.group_size", "exclude"});
  expect_error("inputs: [a.h5]\nbase: innerq\nablations: {x: {axes: {bits: [2]}}}\n", {"cfg.yaml:2:", "did you mean 'innerq_base'"});
  expect_error("ablations: {x: {axes: {bits: [2]}}}\n", {"missing 'inputs'"});
  expect_error("inputs: [a.h5]\nablations:\n  x: {axes: {bits: [2]}}\nexclude:\n  - {bits: 2}\n", {"every configuration was excluded"});
  expect_error("inputs: [a.h5]\nablations: [oops\n", {"cfg.yaml:", "not valid YAML"});
}

// A small synthetic sweep, slow enough (a few seconds) to be killed part-way.
std::string write_config(const std::string& dir, int layers) {
  const std::string path = dir + "/cfg.yaml";
  std::ofstream(path) << "name: t\ninputs:\n  - synth: {layers: " << layers
                      << ", heads: 4, kv_heads: 2, head_dim: 64, seq_len: 600, seed: 3}\n"
                         "ablations:\n  m:\n    axes:\n      preset: [kivi, innerq_hybrid, innerq_base, q4_1]\n"
                         "queries: 48\noutput: "
                      << dir << "/out\n";
  return path;
}

// The task id of a journal line ({"rows": ..., "task": "slab:0:1:1"}).
std::string task_of(const std::string& line) {
  const auto at = line.find("\"task\":\"");
  if (at == std::string::npos) return "";
  const auto start = at + 8;
  return line.substr(start, line.find('"', start) - start);
}

int run(const std::string& args) {
  const int raw = std::system((std::string(KVQ_BINARY) + " " + args + " >/dev/null 2>&1").c_str());
  return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
}

TEST(Sweep, SameBytesWhateverTheThreadCount) {
  const std::string dir = temp_dir("threads");
  const std::string cfg = write_config(dir, 3);
  ASSERT_EQ(run("sweep " + cfg + " --output " + dir + "/one"), 0);
  ASSERT_EQ(std::system(("OMP_NUM_THREADS=1 " + std::string(KVQ_BINARY) + " sweep " + cfg + " --output " + dir +
                         "/serial >/dev/null 2>&1").c_str()),
            0);
  const std::string csv = read(dir + "/one/results.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 4 * 3 * 2);  // header + configs x layers x heads
  EXPECT_EQ(csv, read(dir + "/serial/results.csv"));
  // Without --resume, an existing journal is an error, not a silent mix.
  EXPECT_EQ(run("sweep " + cfg + " --output " + dir + "/one"), 2);
}

TEST(Sweep, ResumesAfterKillMinus9WithoutRecomputingOrDuplicating) {
  const std::string dir = temp_dir("kill");
  const std::string cfg = write_config(dir, 12);
  ASSERT_EQ(run("sweep " + cfg + " --output " + dir + "/reference"), 0);
  const std::string journal = dir + "/out/journal/shard-0-of-1.jsonl";
  const pid_t child = fork();
  if (child == 0) {
    execl(KVQ_BINARY, KVQ_BINARY, "sweep", cfg.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Kill as soon as a few tasks (of 24) are journaled, wherever the process is then.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::size_t lines = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = read(journal);
    lines = static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
    if (lines >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the sweep finished before it could be killed";
  EXPECT_FALSE(fs::exists(dir + "/out/results.csv"));
  std::set<std::string> before;
  {
    std::istringstream in(read(journal));
    std::string line;
    while (std::getline(in, line)) before.insert(task_of(line));
  }
  ASSERT_GE(before.size(), 3u);
  ASSERT_EQ(run("sweep " + cfg + " --resume"), 0);
  EXPECT_EQ(read(dir + "/out/results.csv"), read(dir + "/reference/results.csv"));
  // Every task journaled exactly once: finished tasks were not run again.
  std::istringstream in(read(journal));
  std::string line;
  std::multiset<std::string> ids;
  while (std::getline(in, line)) ids.insert(task_of(line));
  for (const auto& id : ids) EXPECT_EQ(ids.count(id), 1u) << id;
  EXPECT_EQ(ids.size(), 24u);
}

TEST(Sweep, ShardsMergedAndMpiRanksEqualOneProcess) {
  const std::string dir = temp_dir("shards");
  const std::string cfg = write_config(dir, 3);
  ASSERT_EQ(run("sweep " + cfg + " --output " + dir + "/one"), 0);
  const std::string expected = read(dir + "/one/results.csv");
  ASSERT_EQ(run("sweep " + cfg + " --output " + dir + "/sharded --shard 1/2"), 0);
  EXPECT_FALSE(fs::exists(dir + "/sharded/results.csv"));
  EXPECT_EQ(run("merge " + dir + "/sharded"), 2);  // shard 0 has not run: a clear error
  ASSERT_EQ(run("sweep " + cfg + " --output " + dir + "/sharded --shard 0/2"), 0);
  EXPECT_EQ(read(dir + "/sharded/results.csv"), expected);  // the last shard to finish writes the results
  fs::remove(dir + "/sharded/results.csv");
  ASSERT_EQ(run("merge " + dir + "/sharded"), 0);
  EXPECT_EQ(read(dir + "/sharded/results.csv"), expected);
#if defined(KVQ_TEST_MPIRUN)
  const std::string mpi = std::string(KVQ_TEST_MPIRUN) + " -np 2 --oversubscribe --allow-run-as-root " + KVQ_BINARY +
                          " sweep " + cfg + " --output " + dir + "/mpi >/dev/null 2>&1";
  ASSERT_EQ(std::system(mpi.c_str()), 0);
  EXPECT_EQ(read(dir + "/mpi/results.csv"), expected);
  EXPECT_TRUE(fs::exists(dir + "/mpi/journal/shard-1-of-2.jsonl"));  // both ranks did work
#else
  GTEST_SKIP() << "built without MPI: the mpirun half of this test did not run";
#endif
}

}  // namespace
}  // namespace kvq

#include "ablations/latency.h"

namespace kvq {
namespace {

TEST(Latency, ConfigErrorsAndATinyRun) {
  auto expect = [](const std::string& text, const std::string& needle) {
    try {
      ablations::parse_latency_config(text, "lat.yaml");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect("shapes: {p: {tokens: [64]}}\nkernels: [qk, gemm]\n", "kernels: got 'gemm'");
  expect("shapes: {p: {tokens: [64], head_dimm: 64}}\n", "did you mean 'head_dim'");
  expect("shapes: {p: {tokens: [64]}}\nmethods: [innerq]\n", "lat.yaml:2:");
  expect("shapes: {p: {heads: 6, kv_heads: 4, tokens: [64]}}\n", "heads a multiple of kv_heads");
  expect("shapes: {p: {tokens: [64]}}\nbackend: gpu\n", "got 'gpu', expected cpu or cuda");
  expect("shapes: {p: {tokens: [64]}}\ndependent_launch: sometimes\n", "dependent_launch");
  EXPECT_TRUE(ablations::parse_latency_config("shapes: {p: {tokens: [64]}}\n", "lat.yaml").dependent_launch);
  EXPECT_FALSE(ablations::parse_latency_config("shapes: {p: {tokens: [64]}}\ndependent_launch: false\n", "lat.yaml").dependent_launch);
  // The cuda backend: refused at parse time by a build without CUDA; with CUDA but no device, the run
  // stops with a one-line error before writing anything; with a device, a tiny grid on the GPU.
  try {
    auto cuda = ablations::parse_latency_config(
        "shapes: {tiny: {batch: 2, heads: 4, kv_heads: 2, head_dim: 64, tokens: [300]}}\nmethods: [fp16, kivi, innerq_hybrid]\nbackend: cuda\n",
        "lat.yaml");
    EXPECT_EQ(cuda.backend, "cuda");
    cuda.output = temp_dir("latency_cuda") + "/bench.csv";
    try {
      ablations::run_latency(cuda, 0, false, "test");
      const std::string csv = read(cuda.output);
      EXPECT_NE(csv.find("tiny,2,4,2,64,300,innerq_hybrid,attention,cuda,"), std::string::npos) << csv;
      // kivi runs on the outer-layout kernels, its attention through attention_outer.
      EXPECT_NE(csv.find("tiny,2,4,2,64,300,kivi,qk,cuda,"), std::string::npos) << csv;
      EXPECT_NE(csv.find("tiny,2,4,2,64,300,kivi,pv,cuda,"), std::string::npos) << csv;
      EXPECT_NE(csv.find("tiny,2,4,2,64,300,kivi,attention,cuda,"), std::string::npos) << csv;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("needs a CUDA device"), std::string::npos) << e.what();
      EXPECT_FALSE(std::filesystem::exists(cuda.output));
    }
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KVQ_CUDA=ON"), std::string::npos) << e.what();
  }
  const std::string dir = temp_dir("latency");
  auto c = ablations::parse_latency_config(
      "shapes: {tiny: {batch: 2, heads: 4, kv_heads: 2, head_dim: 64, tokens: [300, 700]}}\n"
      "methods: [fp16, kivi, innerq_hybrid]\nrepeats: 2\n", "lat.yaml");
  c.output = dir + "/bench.csv";
  ablations::run_latency(c, 500, false, "test");
  std::istringstream csv(read(c.output));
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "shape,batch,heads,kv_heads,head_dim,tokens,method,kernel,backend,us,bytes,gb_per_s,roofline_pct,"
                    "speedup_vs_fp16,speedup_vs_kivi");
  int rows = 0;
  while (std::getline(csv, line)) {
    ++rows;
    EXPECT_NE(line.find(",300,"), std::string::npos) << "700 is above --max-tokens 500: " << line;
    if (line.find(",fp16,") != std::string::npos) {
      // speedup_vs_fp16 of the fp16 row itself is exactly 1.
      const std::string speedups = line.substr(line.rfind(',', line.rfind(',') - 1) + 1);
      EXPECT_EQ(speedups.substr(0, speedups.find(',')), "1") << line;
    }
  }
  EXPECT_EQ(rows, 3 * 3);  // methods x kernels at one token count
  EXPECT_TRUE(fs::exists(c.output + ".json"));
}

}  // namespace
}  // namespace kvq
