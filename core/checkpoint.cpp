#include "safeload/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "safeload/error.h"

namespace safeload {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kIndexSuffix = ".safetensors.index.json";
constexpr std::string_view kShardSuffix = ".safetensors";
// An index is a small JSON map; bound it before reading (the largest public
// ones are a few MB).
constexpr std::uintmax_t kMaxIndexBytes = 256ull << 20;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

[[noreturn]] void invalid_index(const std::string& index, const std::string& what) {
  throw Error(ErrorCode::kInvalidIndex, "checkpoint index '" + index + "' " + what);
}

std::string read_index_text(const std::string& index) {
  // File::open rejects what is not a regular file without blocking on it.
  const File file = File::open(index);
  if (file.size() > kMaxIndexBytes) {
    invalid_index(index, "is " + std::to_string(file.size()) + " bytes, more than the " +
                             std::to_string(kMaxIndexBytes) + " an index may have");
  }
  std::string text(static_cast<std::size_t>(file.size()), '\0');
  file.pread_full(text.data(), text.size(), 0);
  return text;
}

// The index's weight_map: tensor name -> shard file name as written.
std::map<std::string, std::string> read_weight_map(const std::string& index) {
  const nlohmann::json json = nlohmann::json::parse(read_index_text(index), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) invalid_index(index, "is not valid JSON");
  if (!json.is_object()) invalid_index(index, "is not a JSON object");
  const auto wm = json.find("weight_map");
  if (wm == json.end() || !wm->is_object()) invalid_index(index, "has no \"weight_map\" object");
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string()) invalid_index(index, "maps tensor '" + name + "' to " + file.dump() + ", not a file name");
    out.emplace(name, file.get<std::string>());
  }
  return out;
}

// A shard named by an index, relative to the index's directory. Absolute
// names and ".." would reach outside the checkpoint: refused.
std::string shard_path(const std::string& index, const std::string& name) {
  const fs::path rel(name);
  bool escapes = name.empty() || rel.is_absolute();
  for (const fs::path& part : rel) escapes = escapes || part == "..";
  if (escapes) invalid_index(index, "names shard '" + name + "', which is not a file name inside the checkpoint");
  return (fs::path(index).parent_path() / rel).string();
}

std::vector<std::string> files_in(const std::string& dir, std::string_view suffix, bool index_files) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const bool is_index = ends_with(name, kIndexSuffix);
    if (ends_with(name, suffix) && is_index == index_files) out.push_back(it->path().string());
  }
  if (ec) throw Error(ErrorCode::kIo, "cannot list directory '" + dir + "': " + ec.message(), ec.value());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

ResolvedSource resolve_checkpoint(const std::string& src) {
  std::error_code ec;
  const bool is_dir = fs::is_directory(src, ec);
  std::string index;
  if (is_dir) {
    const std::vector<std::string> indexes = files_in(src, kIndexSuffix, true);
    if (indexes.size() == 1) {
      index = indexes[0];
    } else if (indexes.size() > 1) {
      const std::string preferred = (fs::path(src) / "model.safetensors.index.json").string();
      if (std::find(indexes.begin(), indexes.end(), preferred) == indexes.end()) {
        std::string names;
        for (const std::string& i : indexes) names += (names.empty() ? "'" : ", '") + i + "'";
        throw Error(ErrorCode::kInvalidArgument, "directory '" + src + "' has several checkpoint indexes (" +
                                                     names + "); pass the one to load");
      }
      index = preferred;
    } else {
      ResolvedSource out{files_in(src, kShardSuffix, false), ""};
      if (out.files.empty()) {
        throw Error(ErrorCode::kIo, "no .safetensors file or index in directory '" + src + "'", ENOENT);
      }
      return out;
    }
  } else if (ends_with(src, ".json")) {
    index = src;
  } else {
    return ResolvedSource{{src}, ""};
  }
  ResolvedSource out;
  out.index_path = index;
  for (const auto& [name, file] : read_weight_map(index)) out.files.push_back(shard_path(index, file));
  std::sort(out.files.begin(), out.files.end());
  out.files.erase(std::unique(out.files.begin(), out.files.end()), out.files.end());
  if (out.files.empty()) invalid_index(index, "maps no tensor to any shard");
  return out;
}

void Checkpoint::add_shard(const std::string& path) {
  File file = File::open(path);
  Header header = Header::read(file);
  shards_.push_back(Shard{std::move(file), std::move(header)});
}

void Checkpoint::finish() {
  // No tensor name in two shards (sorted names, then neighbours compared).
  std::vector<std::pair<std::string_view, std::size_t>> names;
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    for (const TensorInfo& t : shards_[s].header.tensors()) names.emplace_back(t.name, s);
    data_bytes_ += shards_[s].header.data_length();
  }
  tensor_count_ = names.size();
  std::sort(names.begin(), names.end());
  for (std::size_t i = 1; i < names.size(); ++i) {
    if (names[i].first == names[i - 1].first) {
      throw Error(ErrorCode::kDuplicateName,
                  "tensor '" + std::string(names[i].first) + "' is in two shards: '" +
                      shards_[names[i - 1].second].file.path() + "' and '" + shards_[names[i].second].file.path() + "'");
    }
  }
}

Checkpoint Checkpoint::open(const std::vector<std::string>& files) {
  SAFELOAD_CHECK(!files.empty(), ErrorCode::kInvalidArgument, "a checkpoint needs at least one file");
  Checkpoint out;
  for (const std::string& f : files) out.add_shard(f);
  out.finish();
  return out;
}

Checkpoint Checkpoint::open(const std::string& src) {
  const ResolvedSource resolved = resolve_checkpoint(src);
  Checkpoint out = open(resolved.files);
  out.index_path_ = resolved.index_path;
  if (out.index_path_.empty()) return out;

  // The index against the shards: every mapped name is in the shard it names,
  // and every tensor of every shard is mapped to that shard.
  const std::string& index = out.index_path_;
  std::map<std::string, const Shard*> by_path;
  for (const Shard& s : out.shards_) by_path.emplace(s.file.path(), &s);
  const std::map<std::string, std::string> weight_map = read_weight_map(index);
  for (const auto& [name, file] : weight_map) {
    const Shard* shard = by_path.at(shard_path(index, file));
    if (shard->header.find(name) == nullptr) {
      invalid_index(index, "maps tensor '" + name + "' to shard '" + shard->file.path() + "', which does not hold it");
    }
  }
  for (const Shard& s : out.shards_) {
    for (const TensorInfo& t : s.header.tensors()) {
      const auto it = weight_map.find(t.name);
      if (it == weight_map.end()) {
        invalid_index(index, "does not list tensor '" + t.name + "', which shard '" + s.file.path() + "' holds");
      }
    }
  }
  return out;
}

}  // namespace safeload
