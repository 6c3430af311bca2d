# Fails if a torch-free part of the tree includes a torch header.
#
#   cmake -DSOURCE_DIR=<repository root> -P cmake/check_torch_free.cmake
#
# Torch-free: core/, reference/, fast/ and every public header except
# include/safeload/torch.h. The torch layer (torch/, include/safeload/torch.h)
# and the binding (python/src/) are the only C++ that sees libtorch; ctest runs
# this as the test torch_free_layers.

if(NOT SOURCE_DIR)
  message(FATAL_ERROR "usage: cmake -DSOURCE_DIR=<repository root> -P check_torch_free.cmake")
endif()

set(_globs "")
foreach(dir core reference fast include/safeload)
  foreach(ext h hpp cpp cc inl)
    list(APPEND _globs "${SOURCE_DIR}/${dir}/*.${ext}")
  endforeach()
endforeach()
file(GLOB_RECURSE _files ${_globs})
list(REMOVE_ITEM _files "${SOURCE_DIR}/include/safeload/torch.h")
list(LENGTH _files _count)
if(_count EQUAL 0)
  message(FATAL_ERROR "no sources found under ${SOURCE_DIR}: wrong SOURCE_DIR?")
endif()

set(_violations "")
foreach(f ${_files})
  file(STRINGS "${f}" _includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"](ATen|c10|torch|caffe2)/")
  foreach(line ${_includes})
    file(RELATIVE_PATH rel "${SOURCE_DIR}" "${f}")
    string(STRIP "${line}" line)
    string(APPEND _violations "\n  ${rel}: ${line}")
  endforeach()
endforeach()

if(_violations)
  message(FATAL_ERROR "torch headers included in the torch-free layers (core/, reference/, fast/, "
                      "include/safeload/ except torch.h); move that code to the torch layer, torch/:"
                      "${_violations}")
endif()
message(STATUS "torch-free layers: ${_count} files, no torch, ATen or c10 include")
