#include "run_folder.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "atomic_file.h"
#include "runtime/check.h"

namespace vae {

namespace fs = std::filesystem;

namespace {

constexpr const char* kNewest = "checkpoint.safetensors";
constexpr const char* kFolder = "checkpoints";

// (step, path) of checkpoints/step_<N>.safetensors, newest first.
std::vector<std::pair<long long, std::string>> step_files(const fs::path& run) {
  std::vector<std::pair<long long, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run / kFolder, ec)) {
    const std::string name = e.path().filename().string();
    const std::string prefix = "step_", suffix = ".safetensors";
    if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.empty() || digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    out.emplace_back(std::stoll(digits), e.path().string());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

}  // namespace

void save_run_checkpoint(const std::string& run_dir, const Checkpoint& ckpt, int keep) {
  VAE_REQUIRE(keep >= 1, "save_run_checkpoint: keep at least one");
  const fs::path run(run_dir);
  std::error_code ec;
  fs::create_directories(run / kFolder, ec);
  if (ec) throw Error((run / kFolder).string() + ": cannot create folder (" + ec.message() + ")");
  save_checkpoint((run / kFolder / ("step_" + std::to_string(ckpt.step) + ".safetensors")).string(), ckpt);
  save_checkpoint((run / kNewest).string(), ckpt);
  const auto files = step_files(run);
  for (size_t i = static_cast<size_t>(keep); i < files.size(); ++i) fs::remove(files[i].second, ec);
}

std::string run_folder_of(const std::string& checkpoint_path) {
  fs::path dir = fs::path(checkpoint_path).parent_path();
  if (dir.filename() == kFolder) dir = dir.parent_path();
  return dir.empty() ? "." : dir.string();
}

FoundCheckpoint find_checkpoint(const std::string& path, const std::string& flag) {
  std::error_code ec;
  FoundCheckpoint found;
  if (!fs::is_directory(path, ec)) {
    found.checkpoint = load_checkpoint(path);
    found.path = path;
    return found;
  }
  // Newest first by step: the step files, and checkpoint.safetensors (normally a copy of the
  // newest; older if the run was killed between the two writes).
  std::vector<std::string> tried;
  const fs::path run(path);
  const std::string newest = (run / kNewest).string();
  bool have = false;
  auto consider = [&](const std::string& file) {
    tried.push_back(file);
    try {
      Checkpoint c = load_checkpoint(file);
      if (!have || c.step > found.checkpoint.step) {
        found.checkpoint = std::move(c);
        found.path = file;
        have = true;
      }
      return true;
    } catch (const Error& e) {
      found.skipped.push_back(e.what());
      return false;
    }
  };
  if (fs::exists(newest, ec)) consider(newest);
  for (const auto& [step, file] : step_files(run)) {
    if (have && step <= found.checkpoint.step) break;
    if (consider(file)) break;
  }
  if (!have) {
    std::string names;
    for (const auto& t : tried) names += (names.empty() ? "" : ", ") + t;
    throw Error(flag + ": " + path + " holds no checkpoint that loads" +
                (names.empty() ? std::string(" (no checkpoint.safetensors, no checkpoints/step_*.safetensors)")
                               : " (tried " + names + ")"));
  }
  return found;
}

void say_skipped(const FoundCheckpoint& found) {
  for (const auto& why : found.skipped) std::fprintf(stderr, "vae: skipping %s\n", why.c_str());
}

void keep_metrics_through_epoch(const std::string& metrics_path, int epochs) {
  std::ifstream in(metrics_path);
  if (!in) return;
  std::string line, kept;
  bool dropped = false;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    int epoch = 0;
    try {
      epoch = nlohmann::json::parse(line).at("epoch").get<int>();
    } catch (const std::exception&) {
      throw Error(metrics_path + ": a line is not a metrics record ('" + printable(line) + "')");
    }
    if (epoch <= epochs) {
      kept += line + "\n";
    } else {
      dropped = true;
    }
  }
  if (dropped) write_file_atomically(metrics_path, kept);
}

}  // namespace vae
