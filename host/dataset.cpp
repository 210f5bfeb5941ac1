#include "dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <cctype>

#include "atomic_file.h"
#include "runtime/check.h"

namespace vae {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw Error(path + ": " + what); }

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void put_be32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
}

// The text between `open` and `close` after 'key': in an NPY header (a Python dict literal);
// open == ' ' means right after the colon and spaces. Empty when the key is missing.
std::string npy_header_value(const std::string& header, const std::string& key, char open, char close) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  at = header.find(':', at);
  if (at == std::string::npos) return "";
  ++at;
  while (at < header.size() && header[at] == ' ') ++at;
  if (open != ' ') {
    if (at >= header.size() || header[at] != open) return "";
    ++at;
  }
  const size_t end = header.find(close, at);
  return end == std::string::npos ? "" : header.substr(at, end - at);
}

}  // namespace

void Dataset::truncate(int64_t n) {
  if (n >= count) return;
  count = n;
  if (type == PixelType::u8)
    u8.resize(static_cast<size_t>(n) * dim());
  else
    f32.resize(static_cast<size_t>(n) * dim());
}

void Dataset::binarize_threshold() {
  for (auto& v : u8) v = v >= 128 ? 255 : 0;
  for (auto& v : f32) v = v >= 0.5f ? 1.f : 0.f;
}

namespace {

// A file read through zlib (plain files unchanged), closed on every path; read() fills up to n
// bytes and returns how many it got (fewer only at the end of the data).
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) fail(path, "no such file");
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) fail(path, std::string("cannot open: ") + std::strerror(errno));
  }
  ~GzReader() {
    if (f_) gzclose(f_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  size_t read(uint8_t* out, size_t n) {
    size_t got = 0;
    while (got < n) {
      const unsigned ask = static_cast<unsigned>(std::min<size_t>(n - got, size_t{1} << 30));
      const int r = gzread(f_, out + got, ask);
      if (r < 0) {
        int err = 0;
        fail(path_, std::string("corrupt gzip data (") + gzerror(f_, &err) + ")");
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    return got;
  }
  // Appends up to n bytes to out, growing it as the data arrives.
  size_t append(std::vector<uint8_t>& out, size_t n) {
    size_t got = 0;
    while (got < n) {
      const size_t at = out.size(), chunk = std::min<size_t>(n - got, size_t{1} << 22);
      out.resize(at + chunk);
      const size_t r = read(out.data() + at, chunk);
      out.resize(at + r);
      got += r;
      if (r < chunk) break;
    }
    return got;
  }
  // After the whole content: a truncated .gz ends without its trailer, which zlib reports at close.
  void close_checked() {
    const int r = gzclose(f_);
    f_ = nullptr;
    if (r != Z_OK) fail(path_, "truncated or corrupt gzip data");
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

}  // namespace

std::vector<uint8_t> read_file_maybe_gz(const std::string& path) {
  GzReader f(path);
  std::vector<uint8_t> out;
  f.append(out, std::numeric_limits<size_t>::max());
  f.close_checked();
  return out;
}

Dataset read_idx_images(const std::string& path, int64_t max_images) {
  GzReader f(path);
  uint8_t header[16];
  const size_t head = f.read(header, sizeof header);
  if (head < 4) fail(path, "too short for an IDX file (" + std::to_string(head) + " bytes)");
  if (header[0] != 0 || header[1] != 0) fail(path, "bad IDX magic (expected 0x0000 then type and rank)");
  if (header[2] != 0x08) fail(path, "IDX element type 0x" + std::to_string(header[2]) + " is not uint8 (0x08)");
  const int rank = header[3];
  if (rank != 3) fail(path, "IDX rank " + std::to_string(rank) + " is not 3 (images: count, rows, columns)");
  if (head < 16) fail(path, "truncated IDX header");
  const uint64_t n = read_be32(&header[4]), h = read_be32(&header[8]), w = read_be32(&header[12]);
  if (h == 0 || w == 0 || h > 4096 || w > 4096)
    fail(path, "implausible image size " + std::to_string(h) + "x" + std::to_string(w));
  // With a limit below the count, only the images used are read (and the rest of the file is not).
  const uint64_t take = max_images > 0 ? std::min<uint64_t>(n, static_cast<uint64_t>(max_images)) : n;
  Dataset d;
  const size_t want = take * h * w;                        // < 2^32 · 2^24
  d.u8.reserve(std::min<size_t>(want, size_t{64} << 20));  // a header's larger claim grows as data arrives
  const size_t got = f.append(d.u8, want);
  size_t total = 16 + got;    // the content's length, when the whole of it has been read
  bool whole = got < want;    // the data ended early: that is its whole length
  if (take == n && !whole) {  // every image read: nothing may follow
    std::vector<uint8_t> rest;
    total += f.append(rest, std::numeric_limits<size_t>::max());
    whole = true;
  }
  if (whole && total != 16 + n * h * w) {
    fail(path, "size mismatch: header says " + std::to_string(n) + " images of " + std::to_string(h) + "x" +
                   std::to_string(w) + " (" + std::to_string(16 + n * h * w) + " bytes), file has " +
                   std::to_string(total));
  }
  if (take == n) f.close_checked();
  if (n == 0) fail(path, "no images");
  d.source = path;
  d.type = PixelType::u8;
  d.count = static_cast<int64_t>(take);
  d.height = static_cast<int>(h);
  d.width = static_cast<int>(w);
  return d;
}

void write_idx_images(const std::string& path, const Dataset& d) {
  VAE_REQUIRE(d.type == PixelType::u8, "IDX images are uint8");
  std::string out;
  out.append({0, 0, 0x08, 3});
  put_be32(out, static_cast<uint32_t>(d.count));
  put_be32(out, static_cast<uint32_t>(d.height));
  put_be32(out, static_cast<uint32_t>(d.width));
  out.append(reinterpret_cast<const char*>(d.u8.data()), d.u8.size());
  write_file_atomically(path, out);
}

namespace {

// The NPY element types read: uint8 kept as bytes; float32, float64 (NumPy's default, narrowed)
// and bool (0 or 1) as floats.
enum class NpyKind { u8, f32, f64, b1 };
size_t npy_element_bytes(NpyKind k) { return k == NpyKind::f32 ? 4 : k == NpyKind::f64 ? 8 : 1; }
const char* npy_kind_name(NpyKind k) {
  return k == NpyKind::u8 ? "uint8" : k == NpyKind::f32 ? "float32" : k == NpyKind::f64 ? "float64" : "bool";
}

// An NPY file's dtype, shape and data, checked against each other (not yet against what the
// caller wants).
struct NpyFile {
  NpyKind kind;
  std::vector<int64_t> shape;
  std::string dims;  // the shape as written, for messages
  std::vector<uint8_t> bytes;
  size_t data_at = 0;
};

NpyFile parse_npy(const std::string& path) {
  NpyFile f;
  f.bytes = read_file_maybe_gz(path);
  const std::vector<uint8_t>& bytes = f.bytes;
  static const char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) fail(path, "bad NPY magic");
  const int major = bytes[6];
  size_t header_len = 0, header_at = 0;
  if (major == 1) {
    header_len = bytes[8] | (size_t{bytes[9]} << 8);
    header_at = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail(path, "truncated NPY header");
    header_len = bytes[8] | (size_t{bytes[9]} << 8) | (size_t{bytes[10]} << 16) | (size_t{bytes[11]} << 24);
    header_at = 12;
  } else {
    fail(path, "unsupported NPY version " + std::to_string(major));
  }
  if (header_at + header_len > bytes.size()) fail(path, "truncated NPY header");
  const std::string header(bytes.begin() + header_at, bytes.begin() + header_at + header_len);
  const std::string descr = npy_header_value(header, "descr", '\'', '\'');
  if (descr.empty()) fail(path, "NPY header has no descr");
  NpyKind kind;
  if (descr == "|u1" || descr == "<u1")
    kind = NpyKind::u8;
  else if (descr == "<f4")
    kind = NpyKind::f32;
  else if (descr == "<f8")
    kind = NpyKind::f64;
  else if (descr == "|b1")
    kind = NpyKind::b1;
  else
    fail(path, "NPY dtype '" + printable(descr) + "' is not uint8 (|u1), float32 (<f4), float64 (<f8) or bool (|b1)");
  if (npy_header_value(header, "fortran_order", ' ', ',') == "True") fail(path, "Fortran-order NPY is not supported");
  const std::string dims = npy_header_value(header, "shape", '(', ')');
  if (dims.empty()) fail(path, "NPY header has no shape");
  std::vector<int64_t> shape;
  for (size_t i = 0; i < dims.size();) {
    if (!std::isdigit(static_cast<unsigned char>(dims[i]))) {
      ++i;
      continue;
    }
    int64_t v = 0;  // digits, refused before they overflow (no huge or wrapped sizes from a header)
    for (; i < dims.size() && std::isdigit(static_cast<unsigned char>(dims[i])); ++i) {
      if (v > (std::numeric_limits<int32_t>::max() - (dims[i] - '0')) / 10) {
        fail(path, "NPY shape (" + printable(dims) + ") has a dimension of 2^31 or more");
      }
      v = v * 10 + (dims[i] - '0');
    }
    shape.push_back(v);
  }
  if (shape.size() != 2 && shape.size() != 3)
    fail(path, "NPY array has rank " + std::to_string(shape.size()) + ", expected 2 (N, D) or 3 (N, H, W)");
  f.kind = kind;
  f.shape = shape;
  f.dims = printable(dims);  // shown in messages: one line, whatever the file holds
  f.data_at = header_at + header_len;
  return f;
}

// The body's size for `count` rows of `cols` elements, checked against the file.
void check_npy_body(const std::string& path, const NpyFile& f, int64_t count, int64_t cols) {
  size_t body = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(count), static_cast<size_t>(cols) * npy_element_bytes(f.kind),
                             &body)) {
    fail(path, "NPY shape (" + f.dims + ") is larger than any file");
  }
  if (f.bytes.size() - f.data_at != body) {
    fail(path, "size mismatch: shape needs " + std::to_string(body) + " data bytes, file has " +
                   std::to_string(f.bytes.size() - f.data_at));
  }
}

// The body's elements as floats (float32, float64 or bool), each passing ok(value as double) or
// named in an error with `why`.
template <typename Ok>
std::vector<float> npy_floats(const std::string& path, const NpyFile& f, size_t n, Ok ok, const char* why) {
  std::vector<float> out(n);
  const uint8_t* body = f.bytes.data() + f.data_at;
  for (size_t i = 0; i < n; ++i) {
    double v = 0;
    if (f.kind == NpyKind::f32) {
      float x;
      std::memcpy(&x, body + 4 * i, 4);
      v = x;
    } else if (f.kind == NpyKind::f64) {
      std::memcpy(&v, body + 8 * i, 8);
    } else {
      v = body[i] != 0 ? 1.0 : 0.0;
    }
    if (!ok(v))
      fail(path, std::string(npy_kind_name(f.kind)) + " value " + std::to_string(v) + " at element " +
                     std::to_string(i) + " is " + why);
    out[i] = static_cast<float>(v);
  }
  return out;
}

}  // namespace

Dataset read_npy(const std::string& path) {
  NpyFile f = parse_npy(path);
  const std::vector<int64_t>& shape = f.shape;
  const std::string& dims = f.dims;
  int64_t pixels = 1;  // per image: an int (Dataset::dim), checked before any int arithmetic
  for (size_t k = 1; k < shape.size(); ++k) {
    if (__builtin_mul_overflow(pixels, shape[k], &pixels) || pixels > std::numeric_limits<int32_t>::max()) {
      fail(path, "NPY images of shape (" + dims + ") have 2^31 or more pixels");
    }
  }
  Dataset d;
  d.source = path;
  d.type = f.kind == NpyKind::u8 ? PixelType::u8 : PixelType::f32;
  d.count = shape[0];
  if (shape.size() == 3) {
    d.height = static_cast<int>(shape[1]);
    d.width = static_cast<int>(shape[2]);
  } else {
    // (N, D): a square image when D is a square, else one row of D pixels.
    const int64_t D = shape[1];
    const int64_t side = std::llround(std::sqrt(static_cast<double>(D)));
    d.height = static_cast<int>(side * side == D ? side : 1);
    d.width = static_cast<int>(side * side == D ? side : D);
  }
  if (d.count <= 0 || d.dim() <= 0) fail(path, "NPY array is empty");
  check_npy_body(path, f, d.count, d.dim());
  if (f.kind == NpyKind::u8) {
    d.u8.assign(f.bytes.begin() + f.data_at, f.bytes.end());
  } else {
    d.f32 = npy_floats(
        path, f, static_cast<size_t>(d.count) * d.dim(), [](double v) { return v >= 0 && v <= 1; }, "outside [0, 1]");
  }
  return d;
}

FloatMatrix read_npy_matrix(const std::string& path) {
  const NpyFile f = parse_npy(path);
  if (f.kind == NpyKind::u8 || f.kind == NpyKind::b1) {
    fail(path, std::string("NPY dtype is ") + npy_kind_name(f.kind) + "; expected float32 (<f4) or float64 (<f8)");
  }
  if (f.shape.size() != 2) fail(path, "NPY array has shape (" + f.dims + "); expected 2 dimensions (N, K)");
  FloatMatrix m;
  m.source = path;
  m.rows = f.shape[0];
  m.cols = static_cast<int>(f.shape[1]);
  if (m.rows <= 0 || m.cols <= 0) fail(path, "NPY array is empty");
  check_npy_body(path, f, m.rows, m.cols);
  // Finite as float32 too: a float64 past its range would be infinite.
  m.values = npy_floats(
      path, f, static_cast<size_t>(m.rows) * m.cols,
      [](double v) { return std::isfinite(v) && std::fabs(v) <= std::numeric_limits<float>::max(); },
      "not finite (as float32)");
  return m;
}

namespace {
void write_npy_bytes(const std::string& path, const char* descr, const std::string& shape, const void* data,
                     size_t bytes) {
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(static_cast<const char*>(data), bytes);
  write_file_atomically(path, out);
}
}  // namespace

void write_npy(const std::string& path, const Dataset& d) {
  write_npy_bytes(path, d.type == PixelType::u8 ? "|u1" : "<f4",
                  std::to_string(d.count) + ", " + std::to_string(d.height) + ", " + std::to_string(d.width), d.data(),
                  d.bytes());
}

void write_npy_matrix(const std::string& path, const FloatMatrix& m) {
  VAE_REQUIRE(m.values.size() == static_cast<size_t>(m.rows) * m.cols, "write_npy_matrix: size");
  write_npy_bytes(path, "<f4", std::to_string(m.rows) + ", " + std::to_string(m.cols), m.values.data(),
                  m.values.size() * sizeof(float));
}

std::string find_idx_file(const std::string& dir, const std::string& stem) {
  namespace fs = std::filesystem;
  for (const std::string& name : {stem, stem + ".gz"}) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  throw Error(dir + ": no " + stem + " or " + stem + ".gz in this folder");
}

}  // namespace vae
