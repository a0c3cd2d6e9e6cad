#pragma once
// Output files appear whole or not at all: write to a temporary name in the
// same folder, then rename over the final path. An AtomicFile that is destroyed
// without commit() removes its temporary file, so an error leaves nothing behind.
#include <string>

namespace kvq {

class AtomicFile {
 public:
  explicit AtomicFile(std::string final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Where to write now.
  const std::string& temp_path() const { return temp_path_; }
  const std::string& final_path() const { return final_path_; }
  // Renames the temporary file to the final path; throws kvq::Error on failure.
  void commit();

 private:
  std::string final_path_;
  std::string temp_path_;
  bool committed_ = false;
};

// Writes text to path atomically.
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace kvq
