// Loads a safetensors file onto the CPU with safeload's fast loader and
// prints each tensor's name, torch dtype and shape, in file order.
//
//   list_tensors FILE [DEVICE]
#include <iostream>
#include <string>

#include "safeload/error.h"
#include "safeload/torch.h"

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " FILE [DEVICE]\n";
    return 2;
  }
  const std::string path = argv[1];
  try {
    const c10::Device device = safeload::parse_device(argc == 3 ? argv[2] : "cpu");
    const safeload::TensorMap tensors = safeload::load_file(path, device);
    std::cout << path << ": " << tensors.size() << " tensors\n";
    for (const auto& [name, tensor] : tensors) {
      std::cout << name << "  " << c10::toString(tensor.scalar_type()) << "  " << tensor.sizes() << '\n';
    }
  } catch (const safeload::Error& e) {
    std::cerr << e.code_name() << ": " << e.what() << '\n';
    return 1;
  }
  return 0;
}
