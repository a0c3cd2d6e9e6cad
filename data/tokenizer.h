#pragma once
// Byte-level BPE (GPT-2 style) from GGUF metadata (tokenizer.ggml.tokens/merges),
// with SmolLM2's pre-tokenizer: every digit on its own, then the GPT-2 split
// regex (contractions, letters, numbers, punctuation runs, whitespace), matched
// with PCRE2 in Unicode mode. decode(encode(text)) == text for any UTF-8 text.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/gguf.h"

namespace kvq::data {

class Tokenizer {
 public:
  explicit Tokenizer(const GgufFile& model);
  // Tokens and merges given directly (tests); tokens are byte-level unicode strings.
  Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Throws kvq::Error for text that is not valid UTF-8.
  std::vector<int> encode(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;
  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  const std::string& token(int id) const { return tokens_.at(static_cast<std::size_t>(id)); }

 private:
  void build(const std::vector<std::string>& merges);
  std::vector<std::string> split(const std::string& text) const;  // pre-tokenization
  void bpe(const std::string& piece, std::vector<int>& out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int> ids_;
  std::unordered_map<std::string, int> merge_rank_;  // "left right" -> rank
  std::string byte_to_symbol_[256];                  // byte -> its unicode symbol (UTF-8)
  std::unordered_map<std::string, unsigned char> symbol_to_byte_;
  void* digits_ = nullptr;  // compiled PCRE2 patterns
  void* words_ = nullptr;
};

}  // namespace kvq::data
