// Declarations shared by the torch layer's files (torch/); not installed, not
// part of safeload's API.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <cstdint>
#include <vector>

#include "safeload/fast.h"

namespace safeload::detail {

// A host pointer through which `t`'s bytes can be written (CPU memory, or MPS
// storage in a shared buffer through its host alias), or nullptr. `keepalive`
// holds whatever keeps that pointer valid.
void* host_writable_pointer(const at::Tensor& t, c10::Storage* keepalive);

// Host memory for `count` slots of `slot_bytes` (a multiple of kDirectIoAlign),
// with room to align: huge pages for bounce slots on Linux, torch's allocator
// (pinned for CUDA) for staging slots. Throws Error(kOutOfMemory) if it cannot
// be had.
at::Tensor slot_memory(std::uint64_t slot_bytes, std::size_t count, bool bounce, c10::Device device);

// `count` consecutive slots of `slot_bytes` from the first kDirectIoAlign
// boundary of `owner` (from slot_memory).
std::vector<void*> carve_slots(const at::Tensor& owner, std::uint64_t slot_bytes, std::size_t count);

// Copies out of staging slots into device tensors with non-blocking copies on
// one stream (the caller's current stream when the load started); one event
// per slot says when it is free again. For CPU destinations (staged=True), a
// plain memcpy.
class TorchStagedTarget final : public fast::StagedTarget {
 public:
  TorchStagedTarget(const std::vector<at::Tensor>& tensors, const at::Tensor& staging, std::size_t slot_count,
                    c10::Device device);
  void copy_from_slot(std::size_t slot, const fast::Plan& plan, const fast::ReadOp& op, const void* src) override;
  void wait_slot(std::size_t slot) override;
  // Every copy issued so far has finished.
  void synchronize() const;

 private:
  at::Tensor staging_;
  c10::Device device_;
  c10::Stream stream_;
  std::vector<at::Tensor> bytes_;
  std::vector<c10::Event> events_;
};

}  // namespace safeload::detail
