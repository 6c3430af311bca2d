// The reference loader's torch side: each tensor read into a CPU tensor by
// the reference loader, then moved with Tensor::to.
#include <ATen/ATen.h>

#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/reference.h"
#include "safeload/torch.h"

namespace safeload {

namespace reference {

TensorMap load_file(const std::string& path, c10::Device device) {
  check_device_usable(device);
  const File file = File::open(path);
  const Header header = Header::read(file);
  check_torch_compatible(header, path);

  std::vector<at::Tensor> host;
  std::vector<void*> dst;
  host.reserve(header.tensors().size());
  for (const TensorInfo& t : header.tensors()) {
    host.push_back(empty_tensor(t, path, c10::Device("cpu")));
    dst.push_back(host.back().mutable_data_ptr());
  }
  safeload::reference::read_tensors(file, header, dst);

  TensorMap out;
  for (std::size_t i = 0; i < host.size(); ++i) {
    out.emplace(header.tensors()[i].name, host[i].to(device));
  }
  return out;
}

}  // namespace reference
}  // namespace safeload
