// TensorBoard event files read back by a reader of the test's own: the TFRecord framing with its
// masked CRC32C (a bitwise CRC32C written here), and the protobuf fields of tensorflow.Event as
// TensorBoard's .proto files number them. TensorBoard's own reader checks the files of a real run
// (tests/test_tensorboard.py).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "support.h"
#include "tensorboard.h"

namespace vae {
namespace {

namespace fs = std::filesystem;

uint32_t bitwise_crc32c(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}
uint32_t masked(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

// One protobuf field: its number, wire type, and value (varint or fixed bits in v, bytes in s).
struct Field {
  int number = 0, type = 0;
  uint64_t v = 0;
  std::string s;
  double f64() const {
    double d;
    std::memcpy(&d, &v, 8);
    return d;
  }
  float f32() const {
    float f;
    const uint32_t u = static_cast<uint32_t>(v);
    std::memcpy(&f, &u, 4);
    return f;
  }
};
uint64_t read_varint(const std::string& b, size_t& i) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    if (i >= b.size()) throw std::runtime_error("truncated varint");
    const unsigned char c = static_cast<unsigned char>(b[i++]);
    v |= static_cast<uint64_t>(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
}
std::multimap<int, Field> parse(const std::string& b) {
  std::multimap<int, Field> out;
  for (size_t i = 0; i < b.size();) {
    Field f;
    const uint64_t key = read_varint(b, i);
    f.number = static_cast<int>(key >> 3);
    f.type = static_cast<int>(key & 7);
    if (f.type == 0) {
      f.v = read_varint(b, i);
    } else if (f.type == 1 || f.type == 5) {
      const size_t n = f.type == 1 ? 8 : 4;
      if (i + n > b.size()) throw std::runtime_error("truncated fixed field");
      std::memcpy(&f.v, b.data() + i, n);
      i += n;
    } else if (f.type == 2) {
      const size_t n = read_varint(b, i);
      if (i + n > b.size()) throw std::runtime_error("truncated bytes");
      f.s = b.substr(i, n);
      i += n;
    } else {
      throw std::runtime_error("wire type " + std::to_string(f.type));
    }
    out.emplace(f.number, f);
  }
  return out;
}
const Field& one(const std::multimap<int, Field>& m, int number) {
  EXPECT_EQ(m.count(number), 1u) << "field " << number;
  static const Field none;
  auto it = m.find(number);
  return it == m.end() ? none : it->second;
}
std::vector<double> packed_doubles(const std::string& s) {
  std::vector<double> v(s.size() / 8);
  std::memcpy(v.data(), s.data(), v.size() * 8);
  return v;
}

// The records of a file: each length and event checked against its masked CRC32C.
std::vector<std::string> read_records(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  for (size_t i = 0; i + 12 <= b.size();) {
    uint64_t n;
    uint32_t length_crc, data_crc;
    std::memcpy(&n, b.data() + i, 8);
    std::memcpy(&length_crc, b.data() + i + 8, 4);
    EXPECT_EQ(length_crc, masked(bitwise_crc32c(b.substr(i, 8)))) << "record " << out.size();
    if (i + 12 + n + 4 > b.size()) break;  // a cut record
    const std::string data = b.substr(i + 12, n);
    std::memcpy(&data_crc, b.data() + i + 12 + n, 4);
    EXPECT_EQ(data_crc, masked(bitwise_crc32c(data))) << "record " << out.size();
    out.push_back(data);
    i += 12 + n + 4;
  }
  return out;
}

// The event's Summary.Value (tag 1, simple_value 2, image 4, histo 5) and its step.
std::multimap<int, Field> summary_value(const std::string& event, int64_t& step) {
  const auto e = parse(event);
  step = static_cast<int64_t>(one(e, 2).v);
  EXPECT_GT(one(e, 1).f64(), 1.7e9) << "wall time in seconds";
  return parse(one(parse(one(e, 5).s), 1).s);
}

TEST(EventFile, Crc32cIsCastagnolis) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the standard check value
  std::mt19937 rng(5);
  for (size_t n : {0u, 1u, 7u, 8u, 63u, 1000u}) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    EXPECT_EQ(crc32c(s.data(), s.size()), bitwise_crc32c(s)) << n;
    EXPECT_EQ(masked_crc32c(s.data(), s.size()), masked(bitwise_crc32c(s))) << n;
  }
}

TEST(EventFile, EveryRecordReadsBackAsTensorBoardsProtobufs) {
  const fs::path dir = fs::temp_directory_path() / ("vae_events_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string png = "\x89PNG\r\n\x1a\n not really an image" + std::string(300, 'x');
  const std::vector<float> values = test::random_uniform(1001, 3, -4.f, 3.f);
  std::string path;
  {
    EventWriter w(dir.string(), 13);  // a resumed run's file: its first step is 13
    path = w.path();
    w.scalar("epoch/test_elbo", 13, -123.456);
    w.image("samples", 14, png, 231, 57);
    w.histogram("posterior/mu", 15, values);
  }
  EXPECT_EQ(fs::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u) << path;
  const auto records = read_records(path);
  ASSERT_EQ(records.size(), 5u);
  // file_version, then SessionLog { status: START } at step 13.
  EXPECT_EQ(one(parse(records[0]), 3).s, "brain.Event:2");
  const auto start = parse(records[1]);
  EXPECT_EQ(one(start, 2).v, 13u);
  EXPECT_EQ(one(parse(one(start, 7).s), 1).v, 1u);  // Event.session_log is field 7 (6: log_message)
  int64_t step = 0;
  auto v = summary_value(records[2], step);
  EXPECT_EQ(step, 13);
  EXPECT_EQ(one(v, 1).s, "epoch/test_elbo");
  EXPECT_EQ(one(v, 2).f32(), -123.456f);
  v = summary_value(records[3], step);
  EXPECT_EQ(step, 14);
  EXPECT_EQ(one(v, 1).s, "samples");
  const auto image = parse(one(v, 4).s);
  EXPECT_EQ(one(image, 1).v, 57u);
  EXPECT_EQ(one(image, 2).v, 231u);
  EXPECT_EQ(one(image, 3).v, 1u);
  EXPECT_EQ(one(image, 4).s, png);
  v = summary_value(records[4], step);
  EXPECT_EQ(one(v, 1).s, "posterior/mu");
  const auto h = parse(one(v, 5).s);
  double lo = 1e9, hi = -1e9, sum = 0, squares = 0;
  for (float x : values) {
    lo = std::min(lo, double(x));
    hi = std::max(hi, double(x));
    sum += x;
    squares += double(x) * x;
  }
  EXPECT_EQ(one(h, 1).f64(), lo);
  EXPECT_EQ(one(h, 2).f64(), hi);
  EXPECT_EQ(one(h, 3).f64(), 1001.0);
  EXPECT_NEAR(one(h, 4).f64(), sum, 1e-9 * squares);
  EXPECT_NEAR(one(h, 5).f64(), squares, 1e-12 * squares);
  const auto limits = packed_doubles(one(h, 6).s), counts = packed_doubles(one(h, 7).s);
  ASSERT_EQ(limits.size(), counts.size());
  ASSERT_GT(limits.size(), 10u);
  // Each value counted in the bucket of the first limit above it, the limits ascending.
  std::vector<double> recount(limits.size(), 0.0);
  for (float x : values) recount[std::upper_bound(limits.begin(), limits.end(), double(x)) - limits.begin()] += 1;
  EXPECT_EQ(recount, counts);
  EXPECT_TRUE(std::is_sorted(limits.begin(), limits.end()));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace vae
