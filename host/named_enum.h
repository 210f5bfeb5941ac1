// The names of an enum's values, as flags and the checkpoint's config spell them: one table per
// enum, read both ways.
#pragma once

#include <cstddef>
#include <string>

#include "runtime/check.h"

namespace vae {

template <typename E>
struct Named {
  E value;
  const char* name;
};

// The name of v; the table's first name for a value it does not hold.
template <typename E, size_t N>
const char* name_of(const Named<E> (&names)[N], E v) {
  for (const auto& n : names)
    if (n.value == v) return n.name;
  return names[0].name;
}

// The value named s; otherwise throws "FLAG: expected a, b or c, got 's'".
template <typename E, size_t N>
E parse_named(const Named<E> (&names)[N], const std::string& s, const char* flag) {
  std::string expected;
  for (size_t i = 0; i < N; ++i) {
    if (s == names[i].name) return names[i].value;
    expected += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + names[i].name;
  }
  throw Error(std::string(flag) + ": expected " + expected + ", got '" + printable(s) + "'");
}

}  // namespace vae
