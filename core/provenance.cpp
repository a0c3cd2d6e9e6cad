#include "core/provenance.h"

#include <ctime>
#include <fstream>
#include <vector>

#include <openssl/evp.h>
#include <unistd.h>

#include "core/error.h"
#include "core/version.h"

namespace kvq {

namespace {
std::string hex_digest(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}
}  // namespace

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open to compute its checksum", path);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx, buffer.data(), static_cast<std::size_t>(in.gcount()));
  }
  return hex_digest(ctx);
}

std::string sha256_text(const std::string& text) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  EVP_DigestUpdate(ctx, text.data(), text.size());
  return hex_digest(ctx);
}

std::string utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

nlohmann::json provenance_json(const Provenance& p) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return {{"kvq_version", kVersion}, {"git_commit", kGitCommit}, {"command", p.command},
          {"config", p.config},      {"input", p.input},          {"input_sha256", p.input_sha256},
          {"seed", p.seed},          {"host", host},              {"time", utc_now()}};
}

std::string command_line(int argc, const char* const* argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) out += (i ? " " : "") + std::string(argv[i]);
  return out;
}

}  // namespace kvq
