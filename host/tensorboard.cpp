#include "tensorboard.h"

#include <unistd.h>

#include <boost/crc.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "runtime/check.h"

namespace vae {

namespace fs = std::filesystem;

uint32_t crc32c(const void* data, size_t n) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data, n);
  return crc.checksum();
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

namespace {

// Protocol buffer encoding: a field is its key (number << 3 | wire type), then a varint (type
// 0), 8 bytes (1), a length and bytes (2) or 4 bytes (5), little-endian.
class Proto {
 public:
  Proto& varint(int field, uint64_t v) {
    key(field, 0);
    put_varint(v);
    return *this;
  }
  Proto& f64(int field, double v) {
    key(field, 1);
    put_le(&v, 8);
    return *this;
  }
  Proto& f32(int field, float v) {
    key(field, 5);
    put_le(&v, 4);
    return *this;
  }
  Proto& bytes(int field, const std::string& b) {
    key(field, 2);
    put_varint(b.size());
    out_ += b;
    return *this;
  }
  Proto& packed_f64(int field, const std::vector<double>& v) {
    std::string b(v.size() * 8, '\0');
    for (size_t i = 0; i < v.size(); ++i) std::memcpy(&b[i * 8], &v[i], 8);  // little-endian hosts only
    return bytes(field, b);
  }
  const std::string& str() const { return out_; }

 private:
  void key(int field, int type) { put_varint(static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(type)); }
  void put_varint(uint64_t v) {
    while (v >= 0x80) {
      out_ += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    out_ += static_cast<char>(v);
  }
  void put_le(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  std::string out_;
};
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the event encoder writes the host's byte order");

// tensorflow.Event: wall_time 1, step 2, file_version 3, summary 5, session_log 7.
Proto event(int64_t step) {
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  Proto e;
  e.f64(1, now).varint(2, static_cast<uint64_t>(step));
  return e;
}
// tensorflow.Summary { value 1: Summary.Value { tag 1, simple_value 2, image 4, histo 5 } }.
std::string summary(const Proto& value) { return Proto().bytes(1, value.str()).str(); }

// TensorBoard's default histogram edges: ±1e-12 · 1.1^k up to 1e20, ±DBL_MAX and 0.
const std::vector<double>& default_edges() {
  static const std::vector<double> edges = [] {
    std::vector<double> pos;
    for (double v = 1e-12; v < 1e20; v *= 1.1) pos.push_back(v);
    pos.push_back(DBL_MAX);
    std::vector<double> all;
    for (auto it = pos.rbegin(); it != pos.rend(); ++it) all.push_back(-*it);
    all.push_back(0.0);
    all.insert(all.end(), pos.begin(), pos.end());
    return all;
  }();
  return edges;
}

// The bucket of v: the index of the first edge above it (TensorFlow's rule, std::upper_bound),
// found from the edges' geometric spacing and checked against its neighbours.
size_t first_edge_above(const std::vector<double>& edges, double v) {
  const long long zero = static_cast<long long>(edges.size() / 2), n = static_cast<long long>(edges.size());
  const double step = std::log(1.1);
  long long b = zero + 1;  // 0 <= v < 1e-12
  if (v >= 1e-12) {
    b = zero + 2 + static_cast<long long>(std::floor(std::log(v / 1e-12) / step));
  } else if (v <= -1e-12) {
    b = zero - static_cast<long long>(std::ceil(std::log(-v / 1e-12) / step));
  } else if (v < 0) {
    b = zero;
  }
  b = std::clamp(b, 0ll, n);
  while (b > 0 && edges[static_cast<size_t>(b - 1)] > v) --b;
  while (b < n && edges[static_cast<size_t>(b)] <= v) ++b;
  return static_cast<size_t>(b);
}

}  // namespace

EventWriter::EventWriter(const std::string& dir, int64_t restart_step) {
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  // TensorBoard reads a folder's event files in name order: the time in seconds leads the name,
  // and a file of the same second or later already there (a quick restart) pushes it past them.
  const std::string prefix = "events.out.tfevents.";
  long long secs =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const long long t = std::atoll(name.c_str() + prefix.size());
    if (t >= secs) secs = t + 1;
  }
  path_ = (fs::path(dir) / (prefix + std::to_string(secs) + "." + host + "." + std::to_string(::getpid()))).string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) throw Error(path_ + ": cannot write the TensorBoard event file");
  write_event(event(0).bytes(3, "brain.Event:2").str());
  // Event.session_log (field 7): SessionLog { status 1: START = 1 }
  if (restart_step >= 0) write_event(event(restart_step).bytes(7, Proto().varint(1, 1).str()).str());
}

EventWriter::~EventWriter() {
  if (file_) std::fclose(file_);
}

void EventWriter::write_event(const std::string& e) {
  char header[12];
  const uint64_t n = e.size();
  std::memcpy(header, &n, 8);
  const uint32_t header_crc = masked_crc32c(header, 8), data_crc = masked_crc32c(e.data(), e.size());
  std::memcpy(header + 8, &header_crc, 4);
  const bool ok = std::fwrite(header, 1, 12, file_) == 12 && std::fwrite(e.data(), 1, e.size(), file_) == e.size() &&
                  std::fwrite(&data_crc, 1, 4, file_) == 4 && std::fflush(file_) == 0;
  if (!ok) throw Error(path_ + ": writing the TensorBoard event file failed");
}

void EventWriter::scalar(const std::string& tag, int64_t step, double value) {
  write_event(event(step).bytes(5, summary(Proto().bytes(1, tag).f32(2, static_cast<float>(value)))).str());
}

void EventWriter::image(const std::string& tag, int64_t step, const std::string& png, int width, int height,
                        int channels) {
  // Summary.Image { height 1, width 2, colorspace 3, encoded_image_string 4 }
  const Proto img = Proto()
                        .varint(1, static_cast<uint64_t>(height))
                        .varint(2, static_cast<uint64_t>(width))
                        .varint(3, static_cast<uint64_t>(channels))
                        .bytes(4, png);
  write_event(event(step).bytes(5, summary(Proto().bytes(1, tag).bytes(4, img.str()))).str());
}

void EventWriter::histogram(const std::string& tag, int64_t step, const std::vector<float>& values) {
  const std::vector<double>& edges = default_edges();
  std::vector<double> counts(edges.size(), 0.0);
  double lo = DBL_MAX, hi = -DBL_MAX, sum = 0, squares = 0;
  for (float f : values) {
    const double v = f;
    if (!std::isfinite(v)) continue;  // no bucket holds them (a diverged run stops before this)
    counts[std::min(first_edge_above(edges, v), edges.size() - 1)] += 1;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    squares += v * v;
  }
  // Runs of empty buckets fold into one, as TensorFlow writes them.
  std::vector<double> limit, bucket;
  for (size_t i = 0; i < edges.size();) {
    double end = edges[i], count = counts[i];
    ++i;
    if (count <= 0) {
      while (i < edges.size() && counts[i] <= 0) end = edges[i++];
    }
    limit.push_back(end);
    bucket.push_back(count);
  }
  // HistogramProto { min 1, max 2, num 3, sum 4, sum_squares 5, bucket_limit 6, bucket 7 }
  const Proto h = Proto()
                      .f64(1, values.empty() ? 0 : lo)
                      .f64(2, values.empty() ? 0 : hi)
                      .f64(3, static_cast<double>(values.size()))
                      .f64(4, sum)
                      .f64(5, squares)
                      .packed_f64(6, limit)
                      .packed_f64(7, bucket);
  write_event(event(step).bytes(5, summary(Proto().bytes(1, tag).bytes(5, h.str()))).str());
}

}  // namespace vae
