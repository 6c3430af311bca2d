// The data section's layout, checked as upstream's Metadata::validate does.
// Private to core/.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "safeload/header.h"

namespace safeload {

// Tensors (sorted by data offsets) must tile the data section from 0, with
// checked element counts and bit sizes that are whole bytes and match their
// offsets. Sets each tensor's numel; returns where the last one ends.
std::uint64_t validate_layout(std::vector<TensorInfo>& tensors, std::string_view path);

// Moves the element at order[k] to position k for every k, in place (one
// cycle at a time), so sorting a million tensors needs no second vector.
// Leaves `order` as the identity.
void permute(std::vector<TensorInfo>& items, std::vector<std::uint32_t>& order);

}  // namespace safeload
