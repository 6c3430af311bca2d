// ============================================================================
//  REFERENCE LOADER: the oracle. Simple, single-threaded, obviously correct.
//  The fast loader must produce exactly these bytes. Clarity over speed here.
// ============================================================================
#include "safeload/reference.h"

#include "safeload/error.h"

namespace safeload::reference {

void read_tensors(const File& file, const Header& header, const std::vector<void*>& dst) {
  const std::vector<TensorInfo>& tensors = header.tensors();
  SAFELOAD_INTERNAL_ASSERT(dst.size() == tensors.size(), "one destination per tensor");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    file.pread_full(dst[i], tensors[i].nbytes(), header.data_start() + tensors[i].begin);
  }
}

}  // namespace safeload::reference
