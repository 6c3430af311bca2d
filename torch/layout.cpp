// Mapping the format onto torch: dtypes, sizes (F4 packed in pairs), and the
// destination tensors a load allocates.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

#include "safeload/error.h"
#include "safeload/torch.h"

namespace safeload {
namespace {

std::optional<c10::ScalarType> scalar_type_of(DType dtype) {
  switch (dtype) {
    case DType::kBool: return c10::ScalarType::Bool;
    case DType::kU8: return c10::ScalarType::Byte;
    case DType::kI8: return c10::ScalarType::Char;
    case DType::kI16: return c10::ScalarType::Short;
    case DType::kU16: return c10::ScalarType::UInt16;
    case DType::kI32: return c10::ScalarType::Int;
    case DType::kU32: return c10::ScalarType::UInt32;
    case DType::kI64: return c10::ScalarType::Long;
    case DType::kU64: return c10::ScalarType::UInt64;
    case DType::kF16: return c10::ScalarType::Half;
    case DType::kBF16: return c10::ScalarType::BFloat16;
    case DType::kF32: return c10::ScalarType::Float;
    case DType::kF64: return c10::ScalarType::Double;
    case DType::kC64: return c10::ScalarType::ComplexFloat;
    case DType::kF8_E5M2: return c10::ScalarType::Float8_e5m2;
    case DType::kF8_E4M3: return c10::ScalarType::Float8_e4m3fn;
    case DType::kF8_E8M0: return c10::ScalarType::Float8_e8m0fnu;
    case DType::kF8_E4M3FNUZ: return c10::ScalarType::Float8_e4m3fnuz;
    case DType::kF8_E5M2FNUZ: return c10::ScalarType::Float8_e5m2fnuz;
    case DType::kF4: return c10::ScalarType::Float4_e2m1fn_x2;
    case DType::kF6_E2M3:
    case DType::kF6_E3M2: return std::nullopt;
  }
  return std::nullopt;
}

std::string describe(const TensorInfo& t, std::string_view path) {
  return "tensor '" + t.name + "' in '" + std::string(path) + "'";
}

}  // namespace

c10::ScalarType torch_dtype(const TensorInfo& t, std::string_view path) {
  const std::optional<c10::ScalarType> st = scalar_type_of(t.dtype);
  SAFELOAD_CHECK(st.has_value(), ErrorCode::kUnsupportedDtype,
                 describe(t, path) + " has dtype " + std::string(dtype_info(t.dtype).name) +
                     ", which torch has no dtype for");
  return *st;
}

std::vector<std::int64_t> torch_sizes(const TensorInfo& t, std::string_view path) {
  std::vector<std::int64_t> sizes = t.shape;
  if (t.dtype == DType::kF4) {
    SAFELOAD_CHECK(!sizes.empty() && sizes.back() % 2 == 0, ErrorCode::kUnsupportedDtype,
                   describe(t, path) +
                       " is F4 with an odd or missing last dimension; torch stores F4 as "
                       "float4_e2m1fn_x2 (pairs along the last dimension), which needs it even");
    sizes.back() /= 2;
  }
  return sizes;
}

void check_torch_compatible(const Header& header, std::string_view path) {
  for (const TensorInfo& t : header.tensors()) {
    torch_dtype(t, path);
    torch_sizes(t, path);
  }
}

namespace {

// Contiguous strides for `sizes`, or nullopt where a product overflows (only
// possible for tensors with a zero dimension, which hold no element: the
// header's checked arithmetic bounds every other shape).
std::optional<std::vector<std::int64_t>> contiguous_strides(const std::vector<std::int64_t>& sizes) {
  std::vector<std::int64_t> strides(sizes.size(), 1);
  std::int64_t stride = 1;
  for (std::size_t d = sizes.size(); d-- > 0;) {
    strides[d] = stride;
    if (__builtin_mul_overflow(stride, std::max<std::int64_t>(sizes[d], 1), &stride)) return std::nullopt;
  }
  return strides;
}

}  // namespace

namespace {

// CPU memory of our own rather than torch's CPU allocator, whose failure is a
// plain c10::Error known only by its message: posix_memalign says ENOMEM.
// 64-byte aligned, as torch's allocator aligns; freed with the tensor.
at::Tensor empty_cpu(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& strides,
                     std::uint64_t nbytes, at::ScalarType dtype, const std::function<std::string()>& what) {
  constexpr std::size_t kAlign = 64;
  void* data = nullptr;
  const int rc = ::posix_memalign(&data, kAlign, std::max<std::uint64_t>(nbytes, 1));
  if (rc != 0) {
    throw Error(ErrorCode::kOutOfMemory, "cannot allocate " + std::to_string(nbytes) + " bytes on cpu for " +
                                             what() + ": " + std::strerror(rc));
  }
  return at::from_blob(data, sizes, strides, [](void* p) { std::free(p); },
                       at::TensorOptions().dtype(dtype).device(c10::Device("cpu")));
}

}  // namespace

at::Tensor empty_tensor(const TensorInfo& t, std::string_view path, c10::Device device,
                        const std::vector<std::int64_t>* part) {
  const std::vector<std::int64_t> sizes = part ? *part : torch_sizes(t, path);
  const at::ScalarType dtype = torch_dtype(t, path);
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  // No element, so any strides describe it; torch's own would overflow
  // (e.g. shape [0, 2^62, 2^62]). Upstream loads such tensors too.
  const std::optional<std::vector<std::int64_t>> contiguous = contiguous_strides(sizes);
  const std::vector<std::int64_t> strides = contiguous ? *contiguous : std::vector<std::int64_t>(sizes.size(), 1);
  std::uint64_t nbytes = t.nbytes();
  if (part) {
    nbytes = c10::elementSize(dtype);
    for (std::int64_t d : sizes) nbytes *= static_cast<std::uint64_t>(d);
  }
  at::Tensor out;
  if (device.is_cpu()) {
    out = empty_cpu(sizes, strides, nbytes, dtype, [&] { return describe(t, path); });
  } else {
    try {
      out = at::empty_strided(sizes, strides, options);
    } catch (const c10::OutOfMemoryError& e) {
      throw Error(ErrorCode::kOutOfMemory, "cannot allocate " + std::to_string(nbytes) + " bytes on " + device.str() +
                                               " for " + describe(t, path) + ": " + e.what_without_backtrace());
    }
  }
  SAFELOAD_INTERNAL_ASSERT(out.nbytes() == nbytes, "torch size must match the header's");
  return out;
}

const at::Tensor& TensorMap::at(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw std::out_of_range("no tensor named '" + name + "'");
  return items_[it->second].second;
}

void TensorMap::emplace(std::string name, at::Tensor tensor) {
  index_.emplace(name, items_.size());
  items_.emplace_back(std::move(name), std::move(tensor));
}

}  // namespace safeload
