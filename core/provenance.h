#pragma once
// Provenance recorded in every result file: kvq version and git commit, the
// command and config that made it, the input's sha256, the seed, host and time.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace kvq {

struct Provenance {
  std::string command;        // the command line
  std::string config;         // resolved spec or config, as text
  std::string input;          // input file path ("" if none)
  std::string input_sha256;   // of the input file
  std::uint64_t seed = 0;
};

// Hex sha256 of a file's bytes; throws kvq::Error if it cannot be read.
std::string sha256_file(const std::string& path);
// Hex sha256 of a string's bytes.
std::string sha256_text(const std::string& text);
// UTC time as ISO 8601.
std::string utc_now();
// The provenance object with kvq version, git commit and host filled in.
nlohmann::json provenance_json(const Provenance& p);
// argv joined with spaces.
std::string command_line(int argc, const char* const* argv);

}  // namespace kvq
