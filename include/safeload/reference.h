// The reference loader: safeload's oracle.
//
// Every other loader is tested against this one, byte for byte, so it is kept
// small, single-threaded and obviously correct: one positional read per tensor,
// straight into that tensor's destination, in data-section order. It trades
// speed for being easy to check by reading. Do not optimise it.
#pragma once

#include <vector>

#include "safeload/file.h"
#include "safeload/header.h"

namespace safeload::reference {

// Reads every tensor of `header` from `file` into `dst[i]` (host memory of at
// least header.tensors()[i].nbytes() bytes; may be null for zero bytes).
// Throws Error(kIo) if a read fails.
void read_tensors(const File& file, const Header& header, const std::vector<void*>& dst);

}  // namespace safeload::reference
