// A checkpoint: the validated headers of every shard of a model, checked
// against its index, before anything is allocated or read.
//
// Hugging Face checkpoints are a directory of `*-0000K-of-0000N.safetensors`
// shards and a `*.safetensors.index.json` whose "weight_map" maps each tensor
// name to the shard that holds it. A Checkpoint holds its shards open (one
// File each) with their validated Headers, and guarantees: every tensor name
// occurs in exactly one shard; where there is an index, it maps every tensor
// of every shard it names to that shard and nothing else. Immutable after
// construction; safe to share between threads.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "safeload/file.h"
#include "safeload/header.h"

namespace safeload {

struct Shard {
  File file;
  Header header;
};

class Checkpoint {
 public:
  // `src` is one of:
  //   - a .safetensors file: a checkpoint of one shard;
  //   - an index (a path ending in ".json"): its weight_map's files, in sorted
  //     order, relative to the index's directory;
  //   - a directory: its one `*.safetensors.index.json` (where there are
  //     several, `model.safetensors.index.json`; otherwise an error listing
  //     them), or, without an index, every `*.safetensors` file in it, sorted.
  // Throws Error(kInvalidIndex) for an index that is malformed or disagrees
  // with its shards, Error(kDuplicateName) for a tensor in two shards (naming
  // both), Error(kIo) for a shard that cannot be opened, and the shard's own
  // error (naming it) for a malformed shard.
  static Checkpoint open(const std::string& src);

  // The given files, in this order, as one checkpoint (no index).
  static Checkpoint open(const std::vector<std::string>& files);

  const std::vector<Shard>& shards() const noexcept { return shards_; }
  // The index file used, or empty.
  const std::string& index_path() const noexcept { return index_path_; }
  std::size_t tensor_count() const noexcept { return tensor_count_; }
  std::uint64_t data_bytes() const noexcept { return data_bytes_; }

 private:
  Checkpoint() = default;
  void add_shard(const std::string& path);
  void finish();  // totals, and no name in two shards
  std::vector<Shard> shards_;
  std::string index_path_;
  std::size_t tensor_count_ = 0;
  std::uint64_t data_bytes_ = 0;
};

// The shard files `src` names, as Checkpoint::open(src) resolves them, with
// the index path (or empty); nothing is opened but the index and directory.
struct ResolvedSource {
  std::vector<std::string> files;
  std::string index_path;
};
ResolvedSource resolve_checkpoint(const std::string& src);

}  // namespace safeload
