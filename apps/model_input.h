#pragma once
// The options every model-driven command shares: --model, --text, --tokens.
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "data/gguf.h"
#include "data/llama.h"
#include "data/tokenizer.h"

namespace kvq::app {

inline constexpr const char* kDefaultText = "/usr/share/common-licenses/GPL-3";

struct ModelInput {
  std::string model = data::default_model_path();
  std::string text = kDefaultText;
  int tokens = 1024;

  void add_to(CLI::App& command);
  // Loaded model, tokenizer and the first `tokens` tokens of the text.
  struct Loaded {
    std::unique_ptr<data::GgufFile> gguf;
    std::unique_ptr<data::Tokenizer> tokenizer;
    std::unique_ptr<data::LlamaModel> model;
    std::vector<int> ids;
    std::string text_sha256;
  };
  Loaded load() const;
};

}  // namespace kvq::app
