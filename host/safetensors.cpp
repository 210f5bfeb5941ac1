#include "safetensors.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <iterator>

#include "atomic_file.h"
#include "runtime/check.h"

namespace vae {

using nlohmann::json;

const SafeTensor* SafeTensorsFile::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

void write_safetensors(const std::string& path, const SafeTensorsFile& f) {
  json header = json::object();
  if (!f.metadata.empty()) header["__metadata__"] = f.metadata;
  size_t offset = 0;
  for (const auto& [name, t] : f.tensors) {
    size_t count = 1;
    for (int64_t d : t.shape) count *= static_cast<size_t>(d);
    VAE_REQUIRE(count == t.data.size(),
                "safetensors: tensor " + name + " has " + std::to_string(t.data.size()) + " values for its shape");
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * count}}};
    offset += 4 * count;
  }
  std::string head = header.dump();
  while (head.size() % 8) head.push_back(' ');  // keeps the data 8-byte aligned
  std::string out(8, '\0');
  const uint64_t n = head.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += head;
  out.reserve(out.size() + offset);
  for (const auto& [name, t] : f.tensors) out.append(reinterpret_cast<const char*>(t.data.data()), 4 * t.data.size());
  write_file_atomically(path, out);
}

SafeTensorsFile read_safetensors(const std::string& path) {
  auto fail = [&](const std::string& what) -> void { throw Error(path + ": " + what); };
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open checkpoint");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) fail("too short for a safetensors file (" + std::to_string(bytes.size()) + " bytes)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
  if (n > bytes.size() - 8) fail("header length " + std::to_string(n) + " runs past the end of the file (truncated?)");
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const json::exception& e) {
    fail(std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) fail("header is not a JSON object");
  const size_t body = bytes.size() - 8 - n;
  const char* data = bytes.data() + 8 + n;
  SafeTensorsFile f;
  size_t covered = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const std::string shown = printable(name);  // for messages
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail("__metadata__ value of '" + printable(m.key()) + "' is not a string");
        f.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      fail("tensor '" + shown + "' lacks dtype, shape or data_offsets");
    }
    if (v["dtype"] != "F32") fail("tensor '" + shown + "' has dtype " + v["dtype"].dump() + ", expected F32");
    SafeTensor t;
    size_t count = 1;  // no wrapped products: a shape larger than any file is an error
    if (!v["shape"].is_array()) fail("tensor '" + shown + "' has a bad shape");
    for (const json& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) fail("tensor '" + shown + "' has a bad shape");
      t.shape.push_back(d.get<int64_t>());
      if (__builtin_mul_overflow(count, static_cast<size_t>(t.shape.back()), &count)) {
        fail("tensor '" + shown + "' has a shape larger than any file");
      }
    }
    if (count > body / 4) fail("tensor '" + shown + "' has a shape larger than the file");
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      fail("tensor '" + shown + "' has bad data_offsets");
    }
    const size_t b = off[0].get<size_t>(), e = off[1].get<size_t>();
    if (b > e || e > body) {
      fail("tensor '" + shown + "' data [" + std::to_string(b) + ", " + std::to_string(e) + ") runs past the " +
           std::to_string(body) + "-byte body (truncated?)");
    }
    if (e - b != 4 * count) fail("tensor '" + shown + "' has " + std::to_string(e - b) + " bytes for its shape");
    t.data.resize(count);
    if (count) std::memcpy(t.data.data(), data + b, 4 * count);
    covered += e - b;
    f.tensors.emplace_back(name, std::move(t));
  }
  if (covered != body) fail("body has " + std::to_string(body) + " bytes but tensors cover " + std::to_string(covered));
  return f;
}

}  // namespace vae
