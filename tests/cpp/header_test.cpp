// Header validation: one test per error code, named after it, then the
// acceptance rules, then every case of the shared fixture corpus.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "safeload/file.h"
#include "safeload/header.h"
#include "test_util.h"

namespace safeload {
namespace {

using testing::entry;
using testing::expect_code;
using testing::make_file;

Header parse(const std::string& file_bytes) { return Header::from_bytes(file_bytes, "test.safetensors"); }

void expect_rejects(ErrorCode code, const std::string& header, const std::string& data = "") {
  expect_code(code, [&] { parse(make_file(header, data)); });
}

const std::string kOneF32 = "{" + entry("a", "F32", "2", 0, 8) + "}";

TEST(HeaderErrors, RejectsHeaderTooSmall) {
  expect_code(ErrorCode::kHeaderTooSmall, [] { parse(""); });
  expect_code(ErrorCode::kHeaderTooSmall, [] { parse(std::string(7, '\0')); });
}

TEST(HeaderErrors, RejectsHeaderTooLarge) {
  std::string file = make_file("{}");
  const std::uint64_t n = kMaxHeaderLength + 1;
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  expect_code(ErrorCode::kHeaderTooLarge, [&] { parse(file); });
  for (int i = 0; i < 8; ++i) file[i] = '\xff';  // u64 max
  expect_code(ErrorCode::kHeaderTooLarge, [&] { parse(file); });
}

TEST(HeaderErrors, RejectsInvalidHeaderLength) {
  std::string file = make_file("{}");
  file[0] = 3;  // declares 3 bytes, has 2
  expect_code(ErrorCode::kInvalidHeaderLength, [&] { parse(file); });
}

TEST(HeaderErrors, RejectsInvalidHeaderUtf8) {
  expect_rejects(ErrorCode::kInvalidHeaderUtf8, "{\"\xff\":1}");
  expect_rejects(ErrorCode::kInvalidHeaderUtf8, "{\"\xc0\xaf\":1}");          // overlong '/'
  expect_rejects(ErrorCode::kInvalidHeaderUtf8, "{\"\xed\xa0\x80\":1}");      // surrogate
  expect_rejects(ErrorCode::kInvalidHeaderUtf8, "{\"\xf4\x90\x80\x80\":1}");  // > U+10FFFF
  expect_rejects(ErrorCode::kInvalidHeaderUtf8, "{\"\xe2\x82\":1}");          // truncated
}

TEST(HeaderErrors, RejectsInvalidJson) {
  expect_rejects(ErrorCode::kInvalidJson, "{");
  expect_rejects(ErrorCode::kInvalidJson, "{}x");
  expect_rejects(ErrorCode::kInvalidJson, std::string("{}\0", 3));
  expect_rejects(ErrorCode::kInvalidJson, "{'a':1}");
  expect_rejects(ErrorCode::kInvalidJson, "{\"a\":[" + std::string(100000, '[') + "}");
  // Numbers beyond a double: the JSON library reports these as out_of_range,
  // which once escaped as a foreign exception (found by fuzz_header).
  expect_rejects(ErrorCode::kInvalidJson, "1e400");
  expect_rejects(ErrorCode::kInvalidJson, "{" + entry("a", "F32", "1e400", 0, 4) + "}", std::string(4, 'x'));
  expect_rejects(ErrorCode::kInvalidJson, "{\"__metadata__\":{\"k\":-1e999}}");
}

TEST(HeaderErrors, RejectsInvalidHeader) {
  expect_rejects(ErrorCode::kInvalidHeader, "[]");
  expect_rejects(ErrorCode::kInvalidHeader, "{\"a\":1}");
  expect_rejects(ErrorCode::kInvalidHeader, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", std::string(8, 'x'));
  expect_rejects(ErrorCode::kInvalidHeader, "{" + entry("a", "F32", "-2", 0, 8) + "}", std::string(8, 'x'));
  expect_rejects(ErrorCode::kInvalidHeader, "{" + entry("a", "F32", "2.0", 0, 8) + "}", std::string(8, 'x'));
  expect_rejects(ErrorCode::kInvalidHeader, "{" + entry("a", "F32", "\"2\"", 0, 8) + "}", std::string(8, 'x'));
  expect_rejects(ErrorCode::kInvalidHeader,
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", std::string(8, 'x'));
  expect_rejects(ErrorCode::kInvalidHeader,
                 "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                 std::string(8, 'x'));
}

TEST(HeaderErrors, RejectsInvalidMetadata) {
  expect_rejects(ErrorCode::kInvalidMetadata, "{\"__metadata__\":{\"k\":1}}");
  expect_rejects(ErrorCode::kInvalidMetadata, "{\"__metadata__\":[]}");
  // A repeated key is allowed (see below), but every value must be a string,
  // even one a later value would replace, as upstream checks each as it reads.
  expect_rejects(ErrorCode::kInvalidMetadata, "{\"__metadata__\":{\"k\":1,\"k\":\"b\"}}");
  // Keys repeated deeper inside a metadata value are still a duplicate.
  expect_rejects(ErrorCode::kInvalidMetadata, "{\"__metadata__\":{\"k\":{\"a\":1,\"a\":1}}}");
}

TEST(HeaderErrors, RejectsUnknownDtype) {
  expect_rejects(ErrorCode::kUnknownDtype, "{" + entry("a", "f32", "2", 0, 8) + "}", std::string(8, 'x'));
  expect_rejects(ErrorCode::kUnknownDtype, "{" + entry("a", "float32", "2", 0, 8) + "}", std::string(8, 'x'));
}

TEST(HeaderErrors, RejectsInvalidOffset) {
  const std::string d16(16, 'x');
  // hole
  expect_rejects(ErrorCode::kInvalidOffset, "{" + entry("a", "F32", "2", 8, 16) + "}", d16);
  // overlap
  expect_rejects(ErrorCode::kInvalidOffset,
                 "{" + entry("a", "F32", "2", 0, 8) + "," + entry("b", "F32", "2", 4, 12) + "}", d16);
  // reversed
  expect_rejects(ErrorCode::kInvalidOffset, "{" + entry("a", "U8", "0", 8, 0) + "}", d16);
}

TEST(HeaderErrors, RejectsValidationOverflow) {
  expect_rejects(ErrorCode::kValidationOverflow,
                 "{" + entry("a", "F32", "4294967296,4294967296,4", 0, 8) + "}", std::string(8, 'x'));
  // Element count fits, bit size does not.
  expect_rejects(ErrorCode::kValidationOverflow,
                 "{" + entry("a", "F64", "2305843009213693952", 0, 8) + "}", std::string(8, 'x'));
  // A dimension torch cannot represent, even with a zero elsewhere.
  expect_rejects(ErrorCode::kValidationOverflow,
                 "{" + entry("a", "F32", "0,9223372036854775808", 0, 0) + "}");
}

TEST(HeaderErrors, RejectsTensorInvalidInfo) {
  expect_rejects(ErrorCode::kTensorInvalidInfo, "{" + entry("a", "F32", "3", 0, 8) + "}", std::string(8, 'x'));
}

TEST(HeaderErrors, RejectsMisalignedSlice) {
  expect_rejects(ErrorCode::kMisalignedSlice, "{" + entry("a", "F4", "3", 0, 2) + "}", std::string(2, 'x'));
  expect_rejects(ErrorCode::kMisalignedSlice, "{" + entry("a", "F4", "", 0, 1) + "}", std::string(1, 'x'));
  expect_rejects(ErrorCode::kMisalignedSlice, "{" + entry("a", "F6_E2M3", "2", 0, 2) + "}", std::string(2, 'x'));
}

TEST(HeaderErrors, RejectsMetadataIncompleteBuffer) {
  expect_rejects(ErrorCode::kMetadataIncompleteBuffer, kOneF32, std::string(7, 'x'));  // truncated
  expect_rejects(ErrorCode::kMetadataIncompleteBuffer, kOneF32, std::string(9, 'x'));  // trailing
  expect_rejects(ErrorCode::kMetadataIncompleteBuffer, "{}", "x");
}

TEST(HeaderErrors, RejectsDuplicateName) {
  expect_rejects(ErrorCode::kDuplicateName,
                 "{" + entry("a", "F32", "2", 0, 8) + "," + entry("a", "F32", "2", 0, 8) + "}",
                 std::string(8, 'x'));
}

TEST(HeaderErrors, RejectsReservedName) {
  expect_rejects(ErrorCode::kReservedName, "{" + entry("__metadata__", "F32", "2", 0, 8) + "}",
                 std::string(8, 'x'));
}

TEST(HeaderErrors, RejectsUnknownField) {
  expect_rejects(ErrorCode::kUnknownField,
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}",
                 std::string(8, 'x'));
}

TEST(HeaderAccepts, SortsByOffsetAndFindsByName) {
  const std::string header = "{\"__metadata__\":{\"format\":\"pt\"}," + entry("z", "F32", "2", 0, 8) + "," +
                             entry("a", "I64", "1", 8, 16) + "," + entry("m", "BF16", "", 16, 18) + "}";
  const Header h = parse(make_file(header, std::string(18, 'x')));
  ASSERT_EQ(h.tensors().size(), 3u);
  EXPECT_EQ(h.tensors()[0].name, "z");
  EXPECT_EQ(h.tensors()[1].name, "a");
  EXPECT_EQ(h.tensors()[2].name, "m");
  EXPECT_EQ(h.tensors()[2].shape.size(), 0u);
  EXPECT_EQ(h.tensors()[2].numel, 1u);
  EXPECT_EQ(h.data_start(), 8 + header.size());
  EXPECT_EQ(h.data_length(), 18u);
  ASSERT_NE(h.find("a"), nullptr);
  EXPECT_EQ(h.find("a")->begin, 8u);
  EXPECT_EQ(h.find("nope"), nullptr);
  ASSERT_TRUE(h.has_metadata());
  EXPECT_EQ(h.metadata().at(0), std::make_pair(std::string("format"), std::string("pt")));
}

TEST(HeaderAccepts, WhitespacePaddingZeroSizeAndEmpty) {
  EXPECT_EQ(parse(make_file("{}")).tensors().size(), 0u);
  EXPECT_EQ(parse(make_file(" \n\t{}  \r\n ")).tensors().size(), 0u);
  const Header h = parse(make_file("{" + entry("a", "F32", "0", 0, 0) + "," + entry("b", "U8", "3,0", 0, 0) +
                                   "," + entry("c", "U8", "2", 0, 2) + "}", "xy"));
  ASSERT_EQ(h.tensors().size(), 3u);
  EXPECT_EQ(h.tensors()[2].name, "c");
  EXPECT_FALSE(h.has_metadata());
  EXPECT_FALSE(parse(make_file("{\"__metadata__\":null}")).has_metadata());
}

// Upstream reads __metadata__ into a HashMap, so a repeated key keeps the value
// written last; safeload does the same (it once rejected it).
TEST(HeaderAccepts, DuplicateMetadataKeyKeepsTheLastValue) {
  const Header h = parse(make_file("{\"__metadata__\":{\"k\":\"1\",\"j\":\"x\",\"k\":\"2\",\"k\":\"3\"}," +
                                   entry("a", "U8", "1", 0, 1) + "}", "x"));
  ASSERT_TRUE(h.has_metadata());
  ASSERT_EQ(h.metadata().size(), 2u);
  EXPECT_EQ(h.metadata()[0], std::make_pair(std::string("j"), std::string("x")));
  EXPECT_EQ(h.metadata()[1], std::make_pair(std::string("k"), std::string("3")));
  // Escaped and plain spellings of one key are the same key.
  const Header e = parse(make_file("{\"__metadata__\":{\"k\":\"1\",\"\\u006b\":\"2\"}}"));
  ASSERT_EQ(e.metadata().size(), 1u);
  EXPECT_EQ(e.metadata()[0].second, "2");
}

// A file with several faults gets the code of the one found first in this
// order: JSON syntax, nesting and duplicate keys in file order; then a header
// that is not an object; then a repeated tensor name; then the faulty entry
// whose key sorts first; then the layout.
TEST(HeaderPrecedence, SyntaxErrorsWinOverFaultsBeforeThem) {
  expect_rejects(ErrorCode::kInvalidJson, "{\"a\":{\"dtype\":\"nope\",\"shape\":[1],\"data_offsets\":[0,1]},x}", "x");
  expect_rejects(ErrorCode::kInvalidJson, "{" + entry("a", "F32", "-1", 0, 1) + ",\"b\":[" + std::string(80, '[') + "}");
}

TEST(HeaderPrecedence, RepeatedNameBeforeASyntaxErrorWins) {
  expect_rejects(ErrorCode::kDuplicateName, "{" + entry("a", "U8", "1", 0, 1) + "," + entry("a", "U8", "1", 0, 1) + ",}");
  // After a syntax error the names that follow it were never read.
  expect_rejects(ErrorCode::kInvalidJson, "{" + entry("a", "U8", "1", 0, 1) + ",x," + entry("a", "U8", "1", 0, 1) + "}");
}

TEST(HeaderPrecedence, RepeatedNameWinsOverEntryFaults) {
  expect_rejects(ErrorCode::kDuplicateName, "{\"a\":1," + entry("b", "U8", "1", 0, 1) + "," + entry("b", "U8", "1", 0, 1) + "}", "x");
}

TEST(HeaderPrecedence, TheEntryWhoseKeySortsFirstDecides) {
  const std::string bad_dtype = entry("b", "nope", "1", 0, 1);
  const std::string bad_shape = entry("a", "U8", "-1", 0, 1);
  expect_rejects(ErrorCode::kInvalidHeader, "{" + bad_dtype + "," + bad_shape + "}", "x");
  expect_rejects(ErrorCode::kInvalidHeader, "{" + bad_shape + "," + bad_dtype + "}", "x");
  // "__metadata__" sorts between upper and lower case letters.
  expect_rejects(ErrorCode::kInvalidMetadata, "{\"__metadata__\":1,\"a\":2}");
  expect_rejects(ErrorCode::kInvalidHeader, "{\"__metadata__\":1,\"A\":2}");
}

TEST(HeaderPrecedence, WithinAnEntryFieldsAreCheckedInAFixedOrder) {
  // unknown field, then a missing one, then dtype, shape, data_offsets,
  // whatever order they are written in.
  expect_rejects(ErrorCode::kUnknownField,
                 "{\"a\":{\"data_offsets\":1,\"shape\":[-1],\"dtype\":\"nope\",\"x\":0}}");
  expect_rejects(ErrorCode::kInvalidHeader, "{\"a\":{\"dtype\":\"nope\",\"shape\":[1]}}");
  expect_rejects(ErrorCode::kUnknownDtype,
                 "{\"a\":{\"data_offsets\":1,\"shape\":[-1],\"dtype\":\"nope\"}}");
  expect_rejects(ErrorCode::kValidationOverflow,
                 "{\"a\":{\"data_offsets\":1,\"shape\":[9223372036854775808,-1],\"dtype\":\"U8\"}}");
  expect_rejects(ErrorCode::kInvalidHeader,
                 "{\"a\":{\"data_offsets\":1,\"shape\":[-1,9223372036854775808],\"dtype\":\"U8\"}}");
}

// Many tensors written in an order unrelated to their data: they come back
// sorted by offset, and every one is found by name.
TEST(HeaderAccepts, ManyTensorsInShuffledOrder) {
  constexpr std::uint64_t kCount = 5000;
  std::string json = "{";
  for (std::uint64_t k = 0; k < kCount; ++k) {
    const std::uint64_t i = (k * 2039) % kCount;  // 2039 is coprime to kCount
    if (k) json += ",";
    json += entry("layer." + std::to_string(kCount - i) + ".w", "U8", std::to_string(i % 3), i * 2, i * 2 + i % 3);
    json += ",";
    json += entry("pad." + std::to_string(i), "U8", std::to_string(2 - i % 3), i * 2 + i % 3, i * 2 + 2);
  }
  const Header h = parse(make_file(json + "}", std::string(2 * kCount, 'x')));
  ASSERT_EQ(h.tensors().size(), 2 * kCount);
  std::uint64_t at = 0;
  for (const TensorInfo& t : h.tensors()) {
    EXPECT_EQ(t.begin, at);
    at = t.end;
    const TensorInfo* found = h.find(t.name);
    ASSERT_NE(found, nullptr) << t.name;
    EXPECT_EQ(found, &t);
  }
  EXPECT_EQ(h.find("layer.0.w"), nullptr);
}

TEST(HeaderAccepts, SubByteDtypes) {
  const Header h = parse(make_file("{" + entry("a", "F4", "2,4", 0, 4) + "," + entry("b", "F6_E3M2", "4", 4, 7) + "}",
                                   std::string(7, 'x')));
  EXPECT_EQ(h.find("a")->numel, 8u);
  EXPECT_EQ(h.find("b")->nbytes(), 3u);
}

TEST(HeaderRead, ReadsFromAFileLikeFromBytes) {
  const std::string bytes = make_file(kOneF32, std::string(8, 'x'));
  testing::TempFile tmp(bytes);
  const Header h = Header::read(File::open(tmp.path()));
  EXPECT_EQ(h.tensors().size(), 1u);
  EXPECT_EQ(h.file_size(), bytes.size());
}

// Every case of the shared corpus (fixtures/manifest.json): accepted files
// give the manifest's tensors, rejected files the manifest's error code.
TEST(FixtureCorpus, EveryCaseMatchesTheManifest) {
  std::ifstream in(std::string(SAFELOAD_FIXTURES_DIR) + "/manifest.json");
  ASSERT_TRUE(in) << "fixtures/manifest.json not found";
  const nlohmann::json manifest = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& [name, c] : manifest.at("cases").items()) {
    SCOPED_TRACE(name);
    std::ifstream f(std::string(SAFELOAD_FIXTURES_DIR) + "/" + c.at("file").get<std::string>(), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string bytes = ss.str();
    const std::string expect = c.at("expect");
    if (expect == "accept") {
      const Header h = parse(bytes);
      ASSERT_EQ(h.tensors().size(), c.at("tensors").size());
      for (const auto& [tname, t] : c.at("tensors").items()) {
        const TensorInfo* info = h.find(tname);
        ASSERT_NE(info, nullptr) << tname;
        EXPECT_EQ(dtype_info(info->dtype).name, t.at("dtype").get<std::string>());
        EXPECT_EQ(info->shape, t.at("shape").get<std::vector<std::int64_t>>());
        EXPECT_EQ(info->nbytes(), t.at("nbytes").get<std::uint64_t>());
      }
    } else {
      // Rejected cases give the manifest's code; implementation-defined ones
      // safeload's own verdict: accepted (or refused only when loading, for a
      // dtype torch lacks), or the code it rejects them with.
      ASSERT_TRUE(expect == "reject" || expect == "implementation-defined") << expect;
      const std::string code = expect == "reject" ? c.at("error").get<std::string>() : c.at("safeload").get<std::string>();
      if (code == "accept" || code == "UNSUPPORTED_DTYPE") {
        EXPECT_NO_THROW(parse(bytes));
      } else {
        try {
          parse(bytes);
          ADD_FAILURE() << "accepted, expected " << code;
        } catch (const Error& e) {
          EXPECT_EQ(e.code_name(), code) << e.what();
        }
      }
    }
    ++checked;
  }
  ASSERT_FALSE(manifest.at("cases").empty());
  EXPECT_EQ(checked, static_cast<int>(manifest.at("cases").size()));
}

}  // namespace
}  // namespace safeload
