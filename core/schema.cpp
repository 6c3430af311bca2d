// The header's schema over the JSON reader: the top-level object of tensor
// entries and __metadata__, each entry's fields, and which fault a file with
// several gets (see HeaderSchema). Private to core/.
#include "schema.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "json.h"
#include "safeload/error.h"

namespace safeload {
namespace {

std::string tensor_ctx(std::string_view name, std::string_view path) {
  return "tensor " + in_quotes(name) + " " + where(path);
}

class HeaderSchema final : public JsonReader {
 public:
  HeaderSchema(std::string_view json, std::string_view path) : JsonReader(json, path) {}

  // Parses the whole document; throws on faults of classes 1 and 2. Those of
  // classes 3 and 4 are left for finish() so that class 1 wins over them.
  void run() {
    try {
      skip_ws();
      if (peek() == '{') {
        root_object();
      } else {
        const std::size_t start = pos_;
        const Kind kind = value();
        skip_ws();
        if (pos_ != in_.size()) syntax_error(pos_, "expected the end of the header, found " + found());
        throw Error(ErrorCode::kInvalidHeader, "the header " + where(path_) +
                                                   " must be a JSON object, found " + describe(kind, start));
      }
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kInvalidHeader || e.code() == ErrorCode::kInvalidJson ||
          e.code() == ErrorCode::kInvalidMetadata) {
        // A tensor name given twice before the fault was found first.
        check_unique_names();
      }
      throw;
    }
  }

  // Tensors sorted by name as `by_name` (indices into `tensors`); throws a
  // deferred fault if there is one.
  void finish(std::vector<std::uint32_t>* by_name) {
    *by_name = sorted_by_name();
    check_unique_names(*by_name);
    if (deferred_) throw std::move(deferred_->second);
  }

  std::vector<TensorInfo> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  bool has_metadata = false;

 private:
  // Where a duplicate key inside a value is reported: under __metadata__, or
  // in the tensor entry named `tensor`.
  struct Scope {
    bool metadata;
    std::string_view tensor;
  };


  // Where a key given twice inside a value is reported: under __metadata__, or
  // in the tensor entry named `tensor`.
  Error duplicate_key(std::string_view key) const override { return duplicate(scope_, key); }

  Error duplicate(const Scope& scope, std::string_view key) const {
    if (scope.metadata) {
      return Error(ErrorCode::kInvalidMetadata,
                   "__metadata__ key " + in_quotes(key) + " appears twice " + where(path_));
    }
    return Error(ErrorCode::kInvalidHeader, "field " + in_quotes(key) + " appears twice in tensor " +
                                                in_quotes(scope.tensor) + " " + where(path_));
  }

  // Keeps the fault of the top-level entry whose key sorts first.
  void defer(std::string_view key, Error error) {
    if (!deferred_ || key < deferred_->first) deferred_.emplace(std::string(key), std::move(error));
  }

  // --- the header's structure ----------------------------------------------

  void root_object() {
    if (!open('}')) return finish_root();
    do {
      if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
      const std::string_view key = string();
      if (key == "__metadata__") {
        if (seen_metadata_) throw duplicate_name(key);
        seen_metadata_ = true;
        expect(':');
        metadata_value();
      } else {
        SAFELOAD_CHECK(tensors.size() < std::numeric_limits<std::uint32_t>::max(), ErrorCode::kInvalidHeader,
                       "too many tensors in the header " + where(path_));
        tensors.emplace_back();
        tensors.back().name.assign(key);
        expect(':');
        tensor_entry(tensors.back());
      }
    } while (next_member('}'));
    --depth_;
    finish_root();
  }

  void finish_root() {
    skip_ws();
    if (pos_ != in_.size()) syntax_error(pos_, "expected the end of the header, found " + found());
  }

  Error duplicate_name(std::string_view name) const {
    return Error(ErrorCode::kDuplicateName,
                 "tensor name " + in_quotes(name) + " appears twice in the header " + where(path_) +
                     "; safeload rejects duplicate names instead of keeping the last one");
  }

  std::vector<std::uint32_t> sorted_by_name() const {
    std::vector<std::uint32_t> order(tensors.size());
    for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return std::tie(tensors[a].name, a) < std::tie(tensors[b].name, b);
    });
    return order;
  }

  // Throws DUPLICATE_NAME, naming the repeat that comes first in the file.
  void check_unique_names(const std::vector<std::uint32_t>& by_name) const {
    std::optional<std::uint32_t> first_repeat;
    for (std::size_t i = 1; i < by_name.size(); ++i) {
      if (tensors[by_name[i]].name == tensors[by_name[i - 1]].name &&
          (!first_repeat || by_name[i] < *first_repeat)) {
        first_repeat = by_name[i];
      }
    }
    if (first_repeat) throw duplicate_name(tensors[*first_repeat].name);
  }
  void check_unique_names() const { check_unique_names(sorted_by_name()); }

  // A tensor entry: {"dtype": string, "shape": [counts], "data_offsets":
  // [begin, end]} and nothing else. Its fault, if any, is the first of: an
  // unknown field, a missing field, then dtype, shape and data_offsets in
  // that order, whatever order the fields are written in.
  void tensor_entry(TensorInfo& t) {
    const Scope scope{false, t.name};
    scope_ = scope;  // for the values walked inside this entry
    const std::size_t start = pos_;
    if (peek() != '{') {
      const Kind kind = value();
      defer(t.name, Error(ErrorCode::kInvalidHeader,
                          tensor_ctx(t.name, path_) + ": expected an object with dtype, shape and " +
                              "data_offsets, found " + describe(kind, start)));
      return;
    }
    constexpr unsigned kDtype = 1, kShape = 2, kOffsets = 4;
    unsigned seen = 0;
    std::vector<std::string> unknown;  // allocates only for a faulty entry
    std::optional<Error> dtype_fault, shape_fault, offsets_fault;
    if (open('}')) {
      do {
        if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
        const std::string_view key = string();
        const unsigned field = key == "dtype" ? kDtype : key == "shape" ? kShape : key == "data_offsets" ? kOffsets : 0;
        if (field == 0) {
          if (std::find(unknown.begin(), unknown.end(), key) != unknown.end()) throw duplicate(scope, key);
          unknown.emplace_back(key);
        } else {
          if (seen & field) throw duplicate(scope, key);
          seen |= field;
        }
        expect(':');
        switch (field) {
          case kDtype: dtype(t, scope, &dtype_fault); break;
          case kShape: shape(t, scope, &shape_fault); break;
          case kOffsets: offsets(t, scope, &offsets_fault); break;
          default: value();
        }
      } while (next_member('}'));
      --depth_;
    }
    if (!unknown.empty()) {
      defer(t.name, Error(ErrorCode::kUnknownField,
                          tensor_ctx(t.name, path_) + ": unknown field " +
                              in_quotes(*std::min_element(unknown.begin(), unknown.end())) +
                              " (expected only dtype, shape, data_offsets); safeload is stricter than "
                              "upstream here"));
      return;
    }
    for (const auto& [bit, name] : {std::pair{kDtype, "dtype"}, {kShape, "shape"}, {kOffsets, "data_offsets"}}) {
      if (!(seen & bit)) {
        defer(t.name, Error(ErrorCode::kInvalidHeader,
                            tensor_ctx(t.name, path_) + ": missing field '" + name + "'"));
        return;
      }
    }
    for (std::optional<Error>* fault : {&dtype_fault, &shape_fault, &offsets_fault}) {
      if (*fault) {
        defer(t.name, std::move(**fault));
        return;
      }
    }
  }

  void dtype(TensorInfo& t, const Scope& scope, std::optional<Error>* fault) {
    const std::size_t start = pos_;
    if (peek() != '"') {
      const Kind kind = value();
      fault->emplace(ErrorCode::kInvalidHeader,
                     tensor_ctx(t.name, path_) + ": dtype must be a string, found " + describe(kind, start));
      return;
    }
    const std::string_view name = string();
    const std::optional<DType> parsed = dtype_from_name(name);
    if (!parsed) {
      fault->emplace(ErrorCode::kUnknownDtype, tensor_ctx(t.name, path_) + ": unknown dtype " + in_quotes(name) +
                                                   " (dtype names are upper case, e.g. 'F32', 'BF16', 'F8_E4M3')");
      return;
    }
    t.dtype = *parsed;
  }

  // The first faulty dimension decides: not a count, then over INT64_MAX.
  void shape(TensorInfo& t, const Scope& scope, std::optional<Error>* fault) {
    const std::size_t start = pos_;
    if (peek() != '[') {
      const Kind kind = value();
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": shape must be an array of non-negative integers, found " +
                                                    describe(kind, start));
      return;
    }
    dims_.clear();  // reused across tensors: one exact-size allocation per shape below
    if (open(']')) {
      std::size_t i = 0;
      do {
        const std::size_t item = pos_;
        Number n{Kind::kNull};
        if (peek() == '-' || is_digit(peek())) {
          n = number();
        } else {
          n.kind = value();
        }
        if (!*fault) {
          if (n.kind != Kind::kUnsigned) {
            fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) + ": shape[" + std::to_string(i) +
                                                          "] must be a non-negative integer, found " +
                                                          describe(n.kind, item));
          } else if (n.value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            fault->emplace(ErrorCode::kValidationOverflow, tensor_ctx(t.name, path_) + ": shape[" +
                                                               std::to_string(i) + "] = " + std::to_string(n.value) +
                                                               " does not fit a signed 64-bit size");
          } else {
            dims_.push_back(static_cast<std::int64_t>(n.value));
          }
        }
        ++i;
      } while (next_member(']'));
      --depth_;
    }
    if (!*fault) t.shape.assign(dims_.begin(), dims_.end());
  }

  void offsets(TensorInfo& t, const Scope& scope, std::optional<Error>* fault) {
    const std::size_t start = pos_;
    if (peek() != '[') {
      const Kind kind = value();
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": data_offsets must be [begin, end], found " +
                                                    describe(kind, start));
      return;
    }
    std::size_t count = 0;
    bool counts = true;
    std::uint64_t bounds[2] = {0, 0};
    if (open(']')) {
      do {
        Number n{Kind::kNull};
        if (peek() == '-' || is_digit(peek())) {
          n = number();
        } else {
          n.kind = value();
        }
        if (n.kind != Kind::kUnsigned) counts = false;
        if (count < 2) bounds[count] = n.value;
        ++count;
      } while (next_member(']'));
      --depth_;
    }
    if (count != 2) {
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": data_offsets must be [begin, end], found " +
                                                    describe(Kind::kArray, start));
    } else if (!counts) {
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": data_offsets must be two non-negative integers, found " +
                                                    std::string(in_.substr(start, std::min<std::size_t>(pos_ - start, 80))));
    } else {
      t.begin = bounds[0];
      t.end = bounds[1];
    }
  }

  // __metadata__: null (absent, as upstream's Option reads it) or an object of
  // strings. A key may repeat; the last value wins, as in upstream's HashMap,
  // but every value must be a string, as upstream checks each one as it
  // reads it. Its fault, if any, is the first of: not an object, tensor-entry
  // keys (a tensor named __metadata__), then a value that is not a string.
  void metadata_value() {
    const Scope scope{true, ""};
    scope_ = scope;
    const std::size_t start = pos_;
    if (peek() == 'n') {
      literal("null");
      return;
    }
    if (peek() != '{') {
      const Kind kind = value();
      defer("__metadata__", Error(ErrorCode::kInvalidMetadata, "__metadata__ " + where(path_) +
                                                                   " must be an object of strings, found " +
                                                                   describe(kind, start)));
      return;
    }
    unsigned tensor_keys = 0;
    std::optional<std::pair<std::string, std::string>> not_string;  // first key in byte order, what it holds
    const std::size_t first = metadata.size();
    if (open('}')) {
      do {
        if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
        std::string key = owned_string();
        tensor_keys |= key == "dtype" ? 1 : key == "shape" ? 2 : key == "data_offsets" ? 4 : 0;
        expect(':');
        const std::size_t item = pos_;
        if (peek() == '"') {
          metadata.emplace_back(std::move(key), owned_string());
        } else {
          const Kind kind = value();
          if (!not_string || key < not_string->first) not_string.emplace(std::move(key), describe(kind, item));
        }
      } while (next_member('}'));
      --depth_;
    }
    if (tensor_keys == 7) {
      defer("__metadata__", Error(ErrorCode::kReservedName,
                                  "a tensor is named '__metadata__' " + where(path_) +
                                      "; that key is reserved for the string->string metadata map"));
    } else if (not_string) {
      defer("__metadata__", Error(ErrorCode::kInvalidMetadata, "__metadata__ value for key " +
                                                                   in_quotes(not_string->first) + " " + where(path_) +
                                                                   " must be a string, found " + not_string->second));
    } else {
      has_metadata = true;
      // Sorted by key; of a repeated key, the value written last stays.
      std::stable_sort(metadata.begin() + static_cast<std::ptrdiff_t>(first), metadata.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      auto out = metadata.begin() + static_cast<std::ptrdiff_t>(first);
      for (auto it = out; it != metadata.end(); ++it) {
        if (std::next(it) != metadata.end() && std::next(it)->first == it->first) continue;
        if (out != it) *out = std::move(*it);
        ++out;
      }
      metadata.erase(out, metadata.end());
    }
  }

  // The scope of the value being walked, for duplicate_key.
  Scope scope_{false, ""};
  bool seen_metadata_ = false;
  std::vector<std::int64_t> dims_;  // the shape being read
  std::optional<std::pair<std::string, Error>> deferred_;
};

}  // namespace

ParsedHeader parse_header_json(std::string_view json, std::string_view path) {
  HeaderSchema schema(json, path);
  schema.run();
  ParsedHeader out;
  schema.finish(&out.by_name);
  out.tensors = std::move(schema.tensors);
  out.metadata = std::move(schema.metadata);
  out.has_metadata = schema.has_metadata;
  return out;
}

}  // namespace safeload
