// Devices: parsing the strings users give, checking a device can be used,
// and reaching device memory from the host where it can be (CPU; MPS shared
// buffers through their host alias).
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "internal.h"
#include "safeload/error.h"
#include "safeload/torch.h"

#if defined(__APPLE__) && __has_include(<ATen/mps/MPSAllocatorInterface.h>)
#include <ATen/mps/MPSAllocatorInterface.h>
#include <torch/version.h>
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
#define SAFELOAD_MPS_HOST_ALIAS 1
#endif
#endif

namespace safeload {

c10::Device parse_device(std::string_view device) {
  std::optional<c10::Device> parsed;
  try {
    parsed = c10::Device(std::string(device));
  } catch (const c10::Error&) {
  }
  SAFELOAD_CHECK(parsed.has_value(), ErrorCode::kInvalidArgument,
                 "invalid device '" + std::string(device) + "' (expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps')");
  SAFELOAD_CHECK(!parsed->is_cpu() || !parsed->has_index() || parsed->index() == 0, ErrorCode::kInvalidArgument,
                 "invalid device '" + std::string(device) + "': there is one CPU device, 'cpu' (or 'cpu:0')");
  SAFELOAD_CHECK(!parsed->is_meta(), ErrorCode::kInvalidArgument,
                 "device 'meta' holds no data, so there is nothing to load into; load to 'cpu' or an "
                 "accelerator, or build meta tensors from safeload.read_header");
  return *parsed;
}

void check_device_usable(c10::Device device) {
  parse_device(device.str());
  if (device.is_cpu()) return;
  try {
    (void)at::empty({0}, at::TensorOptions().device(device));
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::kInvalidArgument, "device '" + device.str() +
                                                 "' cannot be used by this torch build: " +
                                                 e.what_without_backtrace());
  }
}

namespace detail {

void* host_writable_pointer(const at::Tensor& t, c10::Storage* keepalive) {
  if (t.device().is_cpu()) return t.mutable_data_ptr();
#if defined(SAFELOAD_MPS_HOST_ALIAS)
  // Apple silicon: MPS storage in a shared (unified-memory) Metal buffer has a
  // CPU alias, so the CPU path's host-route reads apply unchanged. UNTESTED in CI:
  // no Apple hardware; these lines are the whole MPS-specific code.
  if (t.device().is_mps()) {
    at::mps::IMPSAllocator* allocator = at::mps::getIMPSAllocator();
    if (allocator->isSharedBuffer(t.storage().data())) {
      *keepalive = allocator->getHostAliasStorage(t.storage());
      return static_cast<char*>(keepalive->mutable_data()) + t.storage_offset() * t.itemsize();
    }
  }
#endif
  (void)keepalive;
  return nullptr;
}

}  // namespace detail
}  // namespace safeload
