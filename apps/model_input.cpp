#include "apps/model_input.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/provenance.h"

namespace kvq::app {

void ModelInput::add_to(CLI::App& command) {
  command.add_option("--model", model, "GGUF model (scripts/fetch_model.sh fetches SmolLM2-135M)")->capture_default_str();
  command.add_option("--text", text, "UTF-8 text file to run the model on")->capture_default_str();
  command.add_option("--tokens", tokens, "Tokens of the text to use")->capture_default_str()->check(CLI::PositiveNumber);
}

ModelInput::Loaded ModelInput::load() const {
  Loaded out;
  std::ifstream in(text, std::ios::binary);
  if (!in) fail("{}: cannot open the text file", text);
  std::stringstream buffer;
  buffer << in.rdbuf();
  out.gguf = std::make_unique<data::GgufFile>(model);
  out.tokenizer = std::make_unique<data::Tokenizer>(*out.gguf);
  out.ids = out.tokenizer->encode(buffer.str());
  if (static_cast<int>(out.ids.size()) < tokens) {
    fail("{}: the text has {} tokens, fewer than --tokens {}", text, out.ids.size(), tokens);
  }
  out.ids.resize(static_cast<std::size_t>(tokens));
  out.text_sha256 = sha256_file(text);
  out.model = std::make_unique<data::LlamaModel>(*out.gguf);
  return out;
}

}  // namespace kvq::app
