#include "ablations/sweep.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "ablations/runner.h"
#include "analysis/perplexity.h"
#include "analysis/results.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/provenance.h"
#include "data/kv_dump.h"
#include "data/llama.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace kvq::ablations {
namespace {

struct Task {
  std::string id;  // "slab:<input>:<layer>:<head>" or "ppl"
  int input = -1, layer = -1, head = -1;
};

std::string journal_folder(const std::string& output) { return output + "/journal"; }

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

// Appends whole lines to a journal and syncs each, so a crash leaves complete lines and
// at most one torn last line, which the reader drops.
class Journal {
 public:
  explicit Journal(const std::string& path) : path_(path) {
    // Cut a torn last line (a kill during a write) so new lines start clean.
    if (fs::exists(path)) {
      std::ifstream in(path, std::ios::binary);
      std::string text((std::istreambuf_iterator<char>(in)), {});
      const auto last = text.rfind('\n');
      fs::resize_file(path, last == std::string::npos ? 0 : last + 1);
    }
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd_ < 0) fail("{}: cannot open the journal for writing", path);
  }
  ~Journal() { ::close(fd_); }
  void append(const nlohmann::json& entry) {
    const std::string line = entry.dump() + "\n";
    std::lock_guard<std::mutex> lock(mutex_);
    if (::write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || ::fdatasync(fd_) != 0) {
      fail("{}: write failed", path_);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::mutex mutex_;
};

// Every complete entry of every journal in the folder, by task id (the first wins).
std::map<std::string, nlohmann::json> read_journals(const std::string& folder) {
  std::map<std::string, nlohmann::json> done;
  if (!fs::exists(folder)) return done;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(folder))
    if (e.path().extension() == ".jsonl") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      nlohmann::json entry = nlohmann::json::parse(line, nullptr, false);
      if (entry.is_discarded() || !entry.contains("task")) continue;  // a torn line: the task runs again
      done.emplace(entry["task"].get<std::string>(), std::move(entry));
    }
  }
  return done;
}

std::vector<Task> make_tasks(const SweepConfig& c, const std::vector<data::DumpInfo>& infos) {
  std::vector<Task> tasks;
  for (int i = 0; i < static_cast<int>(c.inputs.size()); ++i) {
    std::vector<int> layers = c.layers, heads = c.heads;
    if (layers.empty())
      for (int l = 0; l < infos[i].num_layers; ++l) layers.push_back(l);
    if (heads.empty())
      for (int h = 0; h < infos[i].num_kv_heads; ++h) heads.push_back(h);
    for (int l : layers) {
      if (l < 0 || l >= infos[i].num_layers) fail("{}: layers: {} is out of range 0..{} of {}", c.path, l, infos[i].num_layers - 1, c.inputs[i]);
      for (int h : heads) {
        if (h < 0 || h >= infos[i].num_kv_heads) fail("{}: heads: {} is out of range 0..{} of {}", c.path, h, infos[i].num_kv_heads - 1, c.inputs[i]);
        tasks.push_back({fmt::format("slab:{}:{}:{}", i, l, h), i, l, h});
      }
    }
  }
  if (c.ppl.enabled) tasks.push_back({"ppl"});
  return tasks;
}

// CSV rows (as cell lists) of one slab, one per configuration.
nlohmann::json run_slab(const SweepConfig& c, const data::DumpReader& dump, const Task& task) {
  std::vector<CacheSpec> specs;
  for (const auto& entry : c.entries) specs.push_back(entry.spec);
  const auto window = eval_window(dump.info().seq_len, c.prefill, c.queries, dump.path());
  const auto evals = evaluate_slab(dump, task.layer, task.head, specs, window);
  nlohmann::json rows = nlohmann::json::array();
  for (std::size_t s = 0; s < specs.size(); ++s) {
    rows.push_back(analysis::csv_cells({specs[s], task.layer, task.head, evals[s]}, c.metrics));
  }
  return rows;
}

nlohmann::json run_ppl(const SweepConfig& c) {
  const std::string model_path = c.ppl.model.empty() ? data::default_model_path() : c.ppl.model;
  const std::string text_path = c.ppl.text.empty() ? "/usr/share/common-licenses/GPL-3" : c.ppl.text;
  data::GgufFile gguf(model_path);
  data::Tokenizer tokenizer(gguf);
  std::ifstream in(text_path, std::ios::binary);
  if (!in) fail("{}: ppl.text: cannot open {}", c.path, text_path);
  std::stringstream text;
  text << in.rdbuf();
  auto ids = tokenizer.encode(text.str());
  if (static_cast<int>(ids.size()) < c.ppl.tokens) fail("{}: ppl.text has {} tokens, fewer than ppl.tokens {}", c.path, ids.size(), c.ppl.tokens);
  ids.resize(static_cast<std::size_t>(c.ppl.tokens));
  const data::LlamaModel model(gguf);
  std::vector<CacheSpec> specs;
  for (const auto& e : c.entries) specs.push_back(e.spec);
  const auto results = analysis::perplexity(model, ids, specs, {c.ppl.prefill}, false);
  nlohmann::json rows = nlohmann::json::array();
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::vector<std::string> cells = {r.preset, i == 0 ? "reference" : join(c.entries[i - 1].ablations, ";")};
    for (const auto& [key, value] : spec_fields(r.spec)) cells.push_back(value);
    for (double v : {r.ppl, r.ppl_delta, r.top1, r.kl, r.nll}) cells.push_back(analysis::number_text(v));
    cells.push_back(std::to_string(r.scored));
    rows.push_back(cells);
  }
  return rows;
}

void write_results(const SweepConfig& c, const std::vector<Task>& tasks, const std::map<std::string, nlohmann::json>& done,
                   const std::string& command, const std::string& started) {
  for (const auto& t : tasks)
    if (!done.count(t.id)) fail("{}: task {} has not run yet: run the missing shard, or kvq sweep --resume", c.output, t.id);
  // results.csv: inputs in order, then configurations in order, then layers and heads.
  std::vector<std::string> header = {"input", "ablations"};
  for (const auto& col : analysis::csv_columns(c.metrics)) header.push_back(col);
  std::string csv = analysis::csv_line(header);
  for (int i = 0; i < static_cast<int>(c.inputs.size()); ++i) {
    for (std::size_t s = 0; s < c.entries.size(); ++s) {
      for (const auto& t : tasks) {
        if (t.input != i) continue;
        std::vector<std::string> cells = {c.inputs[i], join(c.entries[s].ablations, ";")};
        for (const auto& cell : done.at(t.id)["rows"][s]) cells.push_back(cell.get<std::string>());
        csv += analysis::csv_line(cells);
      }
    }
  }
  write_file_atomically(c.output + "/results.csv", csv);
  if (c.ppl.enabled) {
    std::vector<std::string> ppl_header = {"preset", "ablations"};
    for (const auto& [key, value] : spec_fields(CacheSpec{})) ppl_header.push_back(key);
    for (const char* col : {"ppl", "ppl_delta", "top1", "kl", "nll", "scored"}) ppl_header.push_back(col);
    std::string ppl = analysis::csv_line(ppl_header);
    for (const auto& row : done.at("ppl")["rows"]) ppl += analysis::csv_line(row.get<std::vector<std::string>>());
    write_file_atomically(c.output + "/ppl.csv", ppl);
  }
  Provenance p;
  p.command = command;
  p.config = c.path;
  p.input = join(c.inputs, ";");
  p.seed = c.seed;
  nlohmann::json inputs = nlohmann::json::array();
  for (const auto& in : c.inputs) inputs.push_back({{"path", in}, {"sha256", sha256_file(in)}});
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& e : c.entries) entries.push_back({{"preset", label(e.spec)}, {"spec", describe(e.spec)}, {"ablations", e.ablations}});
  nlohmann::json manifest = {{"provenance", provenance_json(p)}, {"config_path", c.path}, {"config", c.text},
                             {"name", c.name}, {"inputs", inputs}, {"configurations", entries},
                             {"tasks", tasks.size()}, {"metrics", c.metrics}, {"prefill", c.prefill},
                             {"queries", c.queries}, {"backend", c.backend}, {"started", started},
                             {"finished", utc_now()}, {"ppl", c.ppl.enabled}};
  if (c.ppl.enabled) {
    const std::string model = c.ppl.model.empty() ? data::default_model_path() : c.ppl.model;
    manifest["ppl_model"] = {{"path", model}, {"sha256", sha256_file(model)}, {"tokens", c.ppl.tokens},
                             {"prefill", c.ppl.prefill}};
  }
  write_file_atomically(c.output + "/manifest.json", manifest.dump(2) + "\n");
}

std::string read_or_make_started(const std::string& folder) {
  const std::string path = folder + "/started";
  std::ifstream in(path);
  std::string started;
  if (in && std::getline(in, started) && !started.empty()) return started;
  started = utc_now();
  write_file_atomically(path, started + "\n");
  return started;
}

}  // namespace

bool run_sweep(const SweepConfig& c, const SweepOptions& o) {
  if (o.shards < 1 || o.shard < 0 || o.shard >= o.shards) fail("--shard: got {}/{}, expected i/n with 0 <= i < n", o.shard, o.shards);
  analysis::check_metrics(c.metrics);
  fs::create_directories(c.output);
  for (const auto& [path, synth] : c.synth_inputs) {
    fs::create_directories(fs::path(path).parent_path());
    // Deterministic for its parameters; with shards, the first to get here writes it, the others wait.
    if (o.barrier) {
      if (o.shard == 0 && !fs::exists(path)) data::write_synthetic_dump(synth, path, o.command);
      o.barrier();
    } else if (!fs::exists(path)) {
      data::write_synthetic_dump(synth, path, o.command);
    }
  }
  for (const auto& in : c.inputs) {
    if (!fs::exists(in) && in == kDefaultInput) {
      fail("{}: no such file; make the real SmolLM2 dump with: kvq dump --tokens 1024 --out {}", in, in);
    }
  }
  std::vector<std::unique_ptr<data::DumpReader>> dumps;
  std::vector<data::DumpInfo> infos;
  for (const auto& in : c.inputs) {
    dumps.push_back(std::make_unique<data::DumpReader>(in));
    dumps.back()->check_finite();
    infos.push_back(dumps.back()->info());
    for (const auto& e : c.entries) {
      try {
        e.spec.validate(infos.back().head_dim);
      } catch (const Error& err) {
        fail("{}: configuration {} does not fit {} (head_dim {}): {}", c.path, label(e.spec), in, infos.back().head_dim, err.what());
      }
    }
  }
  const auto tasks = make_tasks(c, infos);
  const std::string folder = journal_folder(c.output);
  fs::create_directories(folder);
  const std::string journal_path = fmt::format("{}/shard-{}-of-{}.jsonl", folder, o.shard, o.shards);
  const std::string sha = sha256_text(c.text);  // the config's identity for resume
  const std::string sha_path = folder + "/config.sha256";
  if (fs::exists(sha_path)) {
    std::ifstream in(sha_path);
    std::string previous;
    std::getline(in, previous);
    if (previous != sha) fail("{}: the journal belongs to a different config than {}: remove the folder to start over", c.output, c.path);
  } else {
    // Shards share the folder: whoever comes first records the config (atomically; all write the same bytes).
    write_file_atomically(sha_path, sha + "\n");
    write_file_atomically(folder + "/config.yaml", c.text);
    write_file_atomically(folder + "/config.path", c.path + "\n");
  }
  if (!o.resume && fs::exists(journal_path) && fs::file_size(journal_path) > 0) {
    fail("{}: holds a journal from an earlier run of shard {}/{}: add --resume to continue it, or remove the folder",
         c.output, o.shard, o.shards);
  }
  const std::string started = read_or_make_started(folder);
  auto done = read_journals(folder);
  std::vector<Task> mine;
  for (std::size_t i = 0; i < tasks.size(); ++i)
    if (static_cast<int>(i % o.shards) == o.shard && !done.count(tasks[i].id)) mine.push_back(tasks[i]);

  Journal journal(journal_path);
  std::atomic<int> finished{0};
  std::mutex print;
  const auto start = std::chrono::steady_clock::now();
  auto progress = [&] {
    if (!o.progress) return;
    std::lock_guard<std::mutex> lock(print);
    const int n = finished;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = n / std::max(elapsed, 1e-9);
    std::fprintf(stderr, "\rsweep: %d/%zu tasks  %.2f tasks/s  ETA %.0fs   %s", n, mine.size(), rate,
                 rate > 0 ? (static_cast<double>(mine.size()) - n) / rate : 0.0, n == static_cast<int>(mine.size()) ? "\n" : "");
  };
  const int slabs = static_cast<int>(std::count_if(mine.begin(), mine.end(), [](const Task& t) { return t.input >= 0; }));
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < slabs; ++i) {
    const Task& t = mine[static_cast<std::size_t>(i)];
    journal.append({{"task", t.id}, {"rows", run_slab(c, *dumps[static_cast<std::size_t>(t.input)], t)}});
    ++finished;
    progress();
  }
  for (const auto& t : mine) {
    if (t.id != "ppl") continue;
    journal.append({{"task", t.id}, {"rows", run_ppl(c)}});
    ++finished;
    progress();
  }
  if (o.barrier) o.barrier();
  if (!o.merge || (o.barrier && o.shard != 0)) return false;
  done = read_journals(folder);
  for (const auto& t : tasks)
    if (!done.count(t.id)) return false;  // other shards still to run: kvq merge joins them
  write_results(c, tasks, done, o.command, started);
  return true;
}

void merge_sweep(const std::string& output, const std::string& command) {
  const std::string folder = journal_folder(output);
  std::ifstream path_in(folder + "/config.path");
  std::string config_path;
  if (!path_in || !std::getline(path_in, config_path)) fail("{}: no sweep journal here (expected {}/config.path)", output, folder);
  std::ifstream text_in(folder + "/config.yaml");
  std::stringstream text;
  text << text_in.rdbuf();
  SweepConfig c = parse_sweep_config(text.str(), config_path);
  c.output = output;
  std::vector<data::DumpInfo> infos;
  for (const auto& in : c.inputs) infos.push_back(data::DumpReader(in).info());
  const auto tasks = make_tasks(c, infos);
  write_results(c, tasks, read_journals(folder), command, read_or_make_started(folder));
}

}  // namespace kvq::ablations
