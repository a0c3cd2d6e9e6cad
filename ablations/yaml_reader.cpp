#include "ablations/yaml_reader.h"

#include <fstream>
#include <sstream>

namespace kvq::ablations {

std::string read_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open the config file", path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

YAML::Node YamlReader::load(const std::string& text) const {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    fail("{}:{}: not valid YAML: {}", path_, e.mark.line + 1, e.msg);
  }
}

}  // namespace kvq::ablations
