#include <string>

#include "apps/commands.h"
#include "core/provenance.h"

namespace kvq::app {
namespace {
std::string& stored() {
  static std::string line;
  return line;
}
}  // namespace

void set_command_line(int argc, const char* const* argv) { stored() = kvq::command_line(argc, argv); }
const std::string& command_line() { return stored(); }

}  // namespace kvq::app
