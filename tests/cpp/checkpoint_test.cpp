// Checkpoints: resolving a directory or an index to shards, and every way an
// index can disagree with its shards.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "safeload/checkpoint.h"
#include "safeload/error.h"
#include "test_util.h"

namespace safeload {
namespace {

namespace fs = std::filesystem;
using testing::expect_code;
using testing::u8_file;

class CheckpointDir : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/safeload_ckpt_XXXXXX";
    ASSERT_NE(::mkdtemp(name), nullptr);
    dir = name;
  }
  void TearDown() override { fs::remove_all(dir); }

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (fs::path(dir) / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  // Two shards, and an index mapping their tensors as given.
  void two_shards(const std::string& weight_map) {
    write("model-00001-of-00002.safetensors", u8_file({{"a", 3}, {"b", 5}}));
    write("model-00002-of-00002.safetensors", u8_file({{"c", 7}}));
    write("model.safetensors.index.json", "{\"metadata\": {\"total_size\": 15}, \"weight_map\": {" + weight_map + "}}");
  }
  static std::string good_map() {
    return "\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\", "
           "\"c\": \"model-00002-of-00002.safetensors\"";
  }
  std::string dir;
};

TEST_F(CheckpointDir, DirectoryWithIndexGivesShardsInOrder) {
  two_shards(good_map());
  write("unrelated.safetensors", u8_file({{"x", 1}}));  // not in the index: ignored
  for (const std::string& src : {dir, dir + "/model.safetensors.index.json"}) {
    const Checkpoint c = Checkpoint::open(src);
    ASSERT_EQ(c.shards().size(), 2u);
    EXPECT_NE(c.shards()[0].file.path().find("00001"), std::string::npos);
    EXPECT_EQ(c.tensor_count(), 3u);
    EXPECT_EQ(c.data_bytes(), 15u);
    EXPECT_FALSE(c.index_path().empty());
  }
}

TEST_F(CheckpointDir, DirectoryWithoutIndexTakesEverySafetensorsFileSorted) {
  write("b.safetensors", u8_file({{"y", 2}}));
  write("a.safetensors", u8_file({{"x", 1}}));
  const Checkpoint c = Checkpoint::open(dir);
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(fs::path(c.shards()[0].file.path()).filename(), "a.safetensors");
  EXPECT_TRUE(c.index_path().empty());
}

TEST_F(CheckpointDir, EmptyDirectoryIsIo) {
  expect_code(ErrorCode::kIo, [&] { Checkpoint::open(dir); });
}

TEST_F(CheckpointDir, SeveralIndexesNeedOneNamedModel) {
  two_shards(good_map());
  write("other.safetensors.index.json", "{\"weight_map\": {}}");
  EXPECT_EQ(Checkpoint::open(dir).shards().size(), 2u) << "model.safetensors.index.json is preferred";
  fs::remove(fs::path(dir) / "model.safetensors.index.json");
  write("third.safetensors.index.json", "{\"weight_map\": {}}");
  expect_code(ErrorCode::kInvalidArgument, [&] { Checkpoint::open(dir); });
}

TEST_F(CheckpointDir, RejectsIndexNamingATensorItsShardLacks) {
  two_shards(good_map() + ", \"ghost\": \"model-00002-of-00002.safetensors\"");
  expect_code(ErrorCode::kInvalidIndex, [&] { Checkpoint::open(dir); });
}

TEST_F(CheckpointDir, RejectsShardTensorTheIndexOmits) {
  two_shards("\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00002-of-00002.safetensors\"");
  expect_code(ErrorCode::kInvalidIndex, [&] { Checkpoint::open(dir); });
}

TEST_F(CheckpointDir, RejectsTensorInTwoShards) {
  two_shards(good_map());
  write("model-00002-of-00002.safetensors", u8_file({{"c", 7}, {"a", 3}}));
  expect_code(ErrorCode::kDuplicateName, [&] { Checkpoint::open(dir); });
  expect_code(ErrorCode::kDuplicateName, [&] {
    Checkpoint::open(std::vector<std::string>{dir + "/model-00001-of-00002.safetensors",
                                              dir + "/model-00002-of-00002.safetensors"});
  });
}

TEST_F(CheckpointDir, RejectsMalformedIndexes) {
  for (const std::string& text : {std::string("not json"), std::string("[]"), std::string("{\"metadata\": {}}"),
                                  std::string("{\"weight_map\": {\"a\": 3}}"),
                                  std::string("{\"weight_map\": {\"a\": \"../x.safetensors\"}}"),
                                  std::string("{\"weight_map\": {\"a\": \"/etc/x.safetensors\"}}"),
                                  std::string("{\"weight_map\": {}}")}) {
    SCOPED_TRACE(text);
    write("model.safetensors.index.json", text);
    expect_code(ErrorCode::kInvalidIndex, [&] { Checkpoint::open(dir); });
  }
}

TEST_F(CheckpointDir, MissingOrMalformedShardNamesIt) {
  two_shards(good_map());
  fs::remove(fs::path(dir) / "model-00002-of-00002.safetensors");
  try {
    Checkpoint::open(dir);
    FAIL() << "a missing shard must fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("model-00002-of-00002"), std::string::npos) << e.what();
  }
  write("model-00002-of-00002.safetensors", u8_file({{"c", 7}}).substr(0, 20));
  expect_code(ErrorCode::kInvalidHeaderLength, [&] { Checkpoint::open(dir); });
}

}  // namespace
}  // namespace safeload
