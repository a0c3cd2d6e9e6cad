#include "core/atomic_file.h"

#include <cstdio>
#include <fstream>

#include <unistd.h>

#include "core/error.h"

namespace kvq {

AtomicFile::AtomicFile(std::string final_path) : final_path_(std::move(final_path)) {
  // The pid keeps concurrent writers (MPI ranks, parallel jobs) apart.
  temp_path_ = fmt::format("{}.tmp.{}", final_path_, static_cast<long>(::getpid()));
}

AtomicFile::~AtomicFile() {
  if (!committed_) std::remove(temp_path_.c_str());
}

void AtomicFile::commit() {
  if (std::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    fail("{}: cannot move the finished output into place", final_path_);
  }
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile file(path);
  {
    std::ofstream out(file.temp_path(), std::ios::binary);
    if (!out) fail("{}: cannot open for writing", path);
    out << text;
    out.flush();
    if (!out) fail("{}: write failed", path);
  }
  file.commit();
}

}  // namespace kvq
