#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <climits>

#include "core/error.h"

namespace kvq::data {

namespace {

std::string utf8(std::uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

// Length of the UTF-8 character starting with byte c.
std::size_t char_length(unsigned char c) { return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4; }

pcre2_code* compile(const char* pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!code) fail("internal: tokenizer regex failed to compile at {}", offset);
  return code;
}

// Splits text into the regex's matches, keeping any unmatched run as a piece of its own.
void split_by(pcre2_code* re, const std::string& text, std::vector<std::string>& out) {
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(re, nullptr);
  PCRE2_SIZE start = 0, covered = 0;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  while (start <= text.size()) {
    const int rc = pcre2_match(re, subject, text.size(), start, 0, match, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(match);
      fail("tokenizer: text is not valid UTF-8 (PCRE2 error {})", rc);
    }
    const PCRE2_SIZE* v = pcre2_get_ovector_pointer(match);
    if (v[0] > covered) out.push_back(text.substr(covered, v[0] - covered));
    if (v[1] > v[0]) out.push_back(text.substr(v[0], v[1] - v[0]));
    covered = v[1];
    start = v[1] > v[0] ? v[1] : v[1] + char_length(static_cast<unsigned char>(text[v[1]]));
  }
  if (covered < text.size()) out.push_back(text.substr(covered));
  pcre2_match_data_free(match);
}

}  // namespace

Tokenizer::Tokenizer(const GgufFile& model) : tokens_(model.get_strings("tokenizer.ggml.tokens")) {
  const std::string kind = model.get_string("tokenizer.ggml.model");
  if (kind != "gpt2") fail("{}: tokenizer.ggml.model is '{}', kvq reads byte-level BPE ('gpt2')", model.path(), kind);
  build(model.get_strings("tokenizer.ggml.merges"));
}

Tokenizer::Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges) : tokens_(std::move(tokens)) {
  build(merges);
}

Tokenizer::~Tokenizer() {
  pcre2_code_free(static_cast<pcre2_code*>(digits_));
  pcre2_code_free(static_cast<pcre2_code*>(words_));
}

void Tokenizer::build(const std::vector<std::string>& merges) {
  // GPT-2's byte-to-unicode map: printable bytes stand for themselves, the rest map to 256+n.
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    byte_to_symbol_[b] = utf8(printable ? static_cast<std::uint32_t>(b) : static_cast<std::uint32_t>(next++));
    symbol_to_byte_[byte_to_symbol_[b]] = static_cast<unsigned char>(b);
  }
  for (std::size_t i = 0; i < tokens_.size(); ++i) ids_.emplace(tokens_[i], static_cast<int>(i));
  for (std::size_t i = 0; i < merges.size(); ++i) merge_rank_.emplace(merges[i], static_cast<int>(i));
  digits_ = compile("\\p{N}");
  words_ = compile("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+");
}

std::vector<std::string> Tokenizer::split(const std::string& text) const {
  std::vector<std::string> digits, pieces;
  split_by(static_cast<pcre2_code*>(digits_), text, digits);
  for (const auto& part : digits) split_by(static_cast<pcre2_code*>(words_), part, pieces);
  return pieces;
}

void Tokenizer::bpe(const std::string& piece, std::vector<int>& out) const {
  std::vector<std::string> symbols;
  for (unsigned char c : piece) symbols.push_back(byte_to_symbol_[c]);
  while (symbols.size() > 1) {
    int best = INT_MAX;
    std::size_t at = 0;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merge_rank_.find(symbols[i] + " " + symbols[i + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == INT_MAX) break;
    symbols[at] += symbols[at + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  for (const auto& s : symbols) {
    auto it = ids_.find(s);
    if (it != ids_.end()) {
      out.push_back(it->second);
    } else {
      // A merged symbol missing from the vocabulary falls back to its bytes' tokens.
      for (std::size_t i = 0; i < s.size(); i += char_length(static_cast<unsigned char>(s[i]))) {
        const std::string symbol = s.substr(i, char_length(static_cast<unsigned char>(s[i])));
        auto byte = ids_.find(symbol);
        if (byte == ids_.end()) {
          fail("tokenizer: byte 0x{:02x} has no token in this vocabulary", symbol_to_byte_.at(symbol));
        }
        out.push_back(byte->second);
      }
    }
  }
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  for (const auto& piece : split(text)) bpe(piece, ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  for (int id : ids) {
    const std::string& t = token(id);
    for (std::size_t i = 0; i < t.size();) {
      const std::size_t n = char_length(static_cast<unsigned char>(t[i]));
      auto it = symbol_to_byte_.find(t.substr(i, n));
      if (it != symbol_to_byte_.end()) {
        out += static_cast<char>(it->second);
      } else {
        out += t.substr(i, n);  // special tokens are stored as plain text
      }
      i += n;
    }
  }
  return out;
}

}  // namespace kvq::data
