// Shared by the fuzz targets: the one way a target reports a finding.
//
// A target aborts (and so makes libFuzzer save the input) when a property of
// safeload fails: a loader disagrees with another, a validated header breaks
// an invariant, an exception other than safeload::Error escapes. Inputs that
// are merely invalid are not findings; they must be rejected with an Error.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond, what)                                                        \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "fuzz property failed: %s (%s) at %s:%d\n", (what), #cond, \
                   __FILE__, __LINE__);                                               \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)
