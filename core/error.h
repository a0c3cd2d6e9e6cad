#pragma once
// One exception type for every user-facing failure. Its message is one line that
// names the file, dataset or config key and what was expected; apps/ prints it
// as "kvq: error: <message>" and exits with status 2.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace kvq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws kvq::Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace kvq
