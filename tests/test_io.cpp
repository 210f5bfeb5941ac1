// IDX, NPY and safetensors round trips; malformed files give a clear error and write nothing.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>

#include "atomic_file.h"
#include "checkpoint.h"
#include "dataset.h"
#include "png_image.h"
#include "runtime/check.h"
#include "safetensors.h"
#include "support.h"

namespace vae {
namespace {

namespace fs = std::filesystem;

class Io : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("vae_io_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string read(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }
  static void write(const std::string& p, const std::string& bytes) {
    std::ofstream f(p, std::ios::binary);
    f << bytes;
  }
  fs::path dir_;
};

Dataset random_images(int n, int h, int w, PixelType type) {
  Dataset d;
  d.type = type;
  d.count = n;
  d.height = h;
  d.width = w;
  const auto v = test::random_uniform(static_cast<size_t>(n) * h * w, n + h + w, 0, 1);
  if (type == PixelType::u8) {
    for (float x : v) d.u8.push_back(static_cast<uint8_t>(x * 255.f));
  } else {
    d.f32 = v;
  }
  return d;
}

// Expects fn to throw vae::Error whose message contains every fragment.
template <typename F>
void expect_error(F fn, std::initializer_list<const char*> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
}

TEST_F(Io, IdxRoundTripPlainAndGzip) {
  const Dataset d = random_images(13, 5, 7, PixelType::u8);
  write_idx_images(path("a-idx3-ubyte"), d);
  const Dataset back = read_idx_images(path("a-idx3-ubyte"));
  EXPECT_EQ(back.count, 13);
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.u8, d.u8);
  // The same bytes gzip-compressed read the same.
  const std::string raw = read(path("a-idx3-ubyte"));
  gzFile gz = gzopen(path("b.gz").c_str(), "wb");
  gzwrite(gz, raw.data(), static_cast<unsigned>(raw.size()));
  gzclose(gz);
  EXPECT_EQ(read_idx_images(path("b.gz")).u8, d.u8);
}

TEST_F(Io, IdxMalformed) {
  const Dataset d = random_images(4, 3, 3, PixelType::u8);
  write_idx_images(path("good"), d);
  std::string raw = read(path("good"));
  std::string bad = raw;
  bad[2] = 0x0d;  // float elements
  write(path("type"), bad);
  expect_error([&] { read_idx_images(path("type")); }, {"type", "not uint8"});
  bad = raw;
  bad[0] = 1;
  write(path("magic"), bad);
  expect_error([&] { read_idx_images(path("magic")); }, {"magic", "magic"});
  write(path("truncated"), raw.substr(0, raw.size() - 5));
  expect_error([&] { read_idx_images(path("truncated")); }, {"truncated", "size mismatch"});
  bad = raw;
  bad[3] = 1;
  write(path("rank"), bad);
  expect_error([&] { read_idx_images(path("rank")); }, {"rank"});
  expect_error([&] { read_idx_images(path("missing")); }, {"missing", "no such file"});
  // A truncated gzip stream.
  gzFile gz = gzopen(path("c.gz").c_str(), "wb");
  gzwrite(gz, raw.data(), static_cast<unsigned>(raw.size()));
  gzclose(gz);
  const std::string z = read(path("c.gz"));
  write(path("cut.gz"), z.substr(0, z.size() / 2));
  expect_error([&] { read_idx_images(path("cut.gz")); }, {"cut.gz"});
}

// With a limit, only the images kept are read: a file damaged after them still gives them (the
// first images, as written), and without the limit, or with one past the damage, it is an error.
// A limit past the count reads and checks the whole file. A header's huge count reserves nothing.
TEST_F(Io, IdxLimitReadsOnlyTheImagesItKeeps) {
  const Dataset d = random_images(11, 5, 3, PixelType::u8);
  write_idx_images(path("good"), d);
  const std::string raw = read(path("good"));
  const size_t image = 5 * 3;
  auto first = [&](int n) { return std::vector<uint8_t>(d.u8.begin(), d.u8.begin() + n * image); };
  for (const bool gz : {false, true}) {
    SCOPED_TRACE(gz ? "gzip" : "plain");
    // Cut in the middle of image 7 (plain), or a gzip stream cut after it and so without its trailer.
    const std::string cut = raw.substr(0, 16 + 6 * image + 4);
    const std::string name = gz ? "cut.gz" : "cut";
    if (gz) {
      gzFile f = gzopen(path(name).c_str(), "wb");
      gzwrite(f, cut.data(), static_cast<unsigned>(cut.size()));
      gzclose(f);
      const std::string z = read(path(name));
      write(path(name), z.substr(0, z.size() - 8));  // no trailer (CRC, length)
    } else {
      write(path(name), cut);
    }
    for (const int limit : {1, 4, 6}) {
      const Dataset back = read_idx_images(path(name), limit);
      EXPECT_EQ(back.count, limit);
      EXPECT_EQ(back.u8, first(limit)) << limit;
    }
    expect_error([&] { read_idx_images(path(name), 7); }, {name.c_str()});
    expect_error([&] { read_idx_images(path(name)); }, {name.c_str()});
  }
  EXPECT_EQ(read_idx_images(path("good"), 11).u8, d.u8);
  EXPECT_EQ(read_idx_images(path("good"), 1000).count, 11);
  write(path("long"), raw + "xyz");  // read whole (the limit is past the count): the extra bytes are found
  expect_error([&] { read_idx_images(path("long"), 1000); }, {"long", "size mismatch", "file has 184"});
  EXPECT_EQ(read_idx_images(path("long"), 3).u8, first(3));
  // 2^31 − 1 images claimed, 3 present.
  std::string huge = raw.substr(0, 16 + 3 * image);
  huge[4] = 0x7f, huge[5] = huge[6] = huge[7] = static_cast<char>(0xff);
  write(path("huge"), huge);
  expect_error([&] { read_idx_images(path("huge"), 5); }, {"huge", "size mismatch", "2147483647 images"});
  EXPECT_EQ(read_idx_images(path("huge"), 2).u8, first(2));
}

TEST_F(Io, NpyRoundTripBothTypes) {
  for (PixelType t : {PixelType::u8, PixelType::f32}) {
    const Dataset d = random_images(9, 4, 6, t);
    write_npy(path("x.npy"), d);
    const Dataset back = read_npy(path("x.npy"));
    EXPECT_EQ(back.type, t);
    EXPECT_EQ(back.count, 9);
    EXPECT_EQ(back.height, 4);
    EXPECT_EQ(back.width, 6);
    EXPECT_EQ(back.u8, d.u8);
    EXPECT_EQ(back.f32, d.f32);
  }
}

// An NPY file written by hand: version 1.0, the header dict padded to 64 bytes, then the body.
std::string npy_file(std::string header, const std::string& body) {
  while ((10 + header.size() + 1) % 64) header.push_back(' ');
  header.push_back('\n');
  std::string file = std::string("\x93NUMPY\x01\x00", 8);
  file.push_back(static_cast<char>(header.size()));
  file.push_back(0);
  return file + header + body;
}

TEST_F(Io, NpyTwoDimensionalAndMalformed) {
  // A hand-written 2-D header: (3, 16) becomes 4x4 images.
  const std::string file =
      npy_file("{'descr': '|u1', 'fortran_order': False, 'shape': (3, 16), }", std::string(48, '\x07'));
  write(path("two.npy"), file);
  const Dataset d = read_npy(path("two.npy"));
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.height, 4);
  EXPECT_EQ(d.width, 4);
  write(path("short.npy"), file.substr(0, file.size() - 1));
  expect_error([&] { read_npy(path("short.npy")); }, {"short.npy", "size mismatch"});
  std::string big_endian = file;
  big_endian.replace(big_endian.find("|u1"), 3, ">f4");
  write(path("big.npy"), big_endian);
  expect_error([&] { read_npy(path("big.npy")); }, {"big.npy", "'>f4'", "float64 (<f8)"});
  write(path("magic.npy"), "NUMPY" + file);
  expect_error([&] { read_npy(path("magic.npy")); }, {"magic"});
  Dataset out_of_range = random_images(2, 2, 2, PixelType::f32);
  out_of_range.f32[3] = 1.5f;
  write_npy(path("range.npy"), out_of_range);
  expect_error([&] { read_npy(path("range.npy")); }, {"range.npy", "outside [0, 1]"});
  out_of_range.f32[3] = std::nanf("");  // NaN and infinities are outside [0, 1] too
  write_npy(path("nan.npy"), out_of_range);
  expect_error([&] { read_npy(path("nan.npy")); }, {"nan.npy", "element 3", "outside [0, 1]"});
  out_of_range.f32[3] = -INFINITY;
  write_npy(path("inf.npy"), out_of_range);
  expect_error([&] { read_npy(path("inf.npy")); }, {"inf.npy", "element 3", "outside [0, 1]"});
}

// NumPy's default float64 and bool arrays, written by hand: read as float32 pixels (float64
// narrowed, bool 0 or 1), and checked for [0, 1] in float64 before they are narrowed; latent codes
// from float64 too, finite as float32.
TEST_F(Io, NpyFloat64AndBool) {
  const std::vector<double> values = {0.0, 1.0, 0.1, 1.0 / 3, 0.999999999, 2e-9, 0.5, 0.25, 0.75, 1e-300, 0.6, 0.7};
  std::string body(values.size() * 8, '\0');
  std::memcpy(body.data(), values.data(), body.size());
  write(path("f64.npy"), npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2, 2), }", body));
  const Dataset d = read_npy(path("f64.npy"));
  EXPECT_EQ(d.type, PixelType::f32);
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.height, 2);
  ASSERT_EQ(d.f32.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(d.f32[i], static_cast<float>(values[i])) << i;
  write(path("z64.npy"), npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }", body));
  const FloatMatrix m = read_npy_matrix(path("z64.npy"));
  EXPECT_EQ(m.rows, 4);
  EXPECT_EQ(m.cols, 3);
  EXPECT_EQ(m.values[3], static_cast<float>(values[3]));
  // Outside [0, 1] by less than float32 rounds away: refused all the same.
  std::vector<double> over = values;
  over[5] = 1.0 + 1e-12;
  std::memcpy(body.data(), over.data(), body.size());
  write(path("over.npy"), npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", body));
  expect_error([&] { read_npy(path("over.npy")); }, {"over.npy", "float64 value", "element 5", "outside [0, 1]"});
  over[5] = 1e300;  // finite in float64, not in float32
  std::memcpy(body.data(), over.data(), body.size());
  write(path("huge.npy"), npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", body));
  expect_error([&] { read_npy_matrix(path("huge.npy")); }, {"huge.npy", "element 5", "not finite (as float32)"});
  // bool: any non-zero byte is True.
  const std::string bits = {0, 1, 1, 0, 2, 0};
  write(path("b.npy"), npy_file("{'descr': '|b1', 'fortran_order': False, 'shape': (2, 3), }", bits));
  const Dataset b = read_npy(path("b.npy"));
  EXPECT_EQ(b.type, PixelType::f32);
  EXPECT_EQ(b.f32, (std::vector<float>{0, 1, 1, 0, 1, 0}));
  expect_error([&] { read_npy_matrix(path("b.npy")); }, {"b.npy", "bool", "expected float32"});
}

// Latent codes: float32 (N, K) of any finite values, round trip and every way to be wrong.
TEST_F(Io, NpyMatrixRoundTripAndMalformed) {
  FloatMatrix m{"", 5, 3, test::random_uniform(15, 3, -40.f, 40.f)};
  write_npy_matrix(path("z.npy"), m);
  const FloatMatrix back = read_npy_matrix(path("z.npy"));
  EXPECT_EQ(back.rows, 5);
  EXPECT_EQ(back.cols, 3);
  EXPECT_EQ(back.values, m.values);
  write_npy(path("u8.npy"), random_images(2, 2, 2, PixelType::u8));
  expect_error([&] { read_npy_matrix(path("u8.npy")); }, {"u8.npy", "uint8"});
  write_npy(path("rank3.npy"), random_images(2, 2, 2, PixelType::f32));
  expect_error([&] { read_npy_matrix(path("rank3.npy")); }, {"rank3.npy", "(2, 2, 2)", "2 dimensions"});
  m.values[7] = INFINITY;
  write_npy_matrix(path("inf.npy"), m);
  expect_error([&] { read_npy_matrix(path("inf.npy")); }, {"inf.npy", "element 7", "not finite"});
  const std::string raw = read(path("z.npy"));
  write(path("cut.npy"), raw.substr(0, raw.size() - 4));
  expect_error([&] { read_npy_matrix(path("cut.npy")); }, {"cut.npy", "size mismatch"});
  // A shape holding a newline and a byte past ASCII (fuzzing found it): one line still.
  write(path("newline.npy"),
        npy_file(std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (") + '\n' + '\xcf' + "5, 3, 1), }",
                 std::string(60, '\0')));
  expect_error([&] { read_npy_matrix(path("newline.npy")); }, {"newline.npy", "2 dimensions"});
}

TEST_F(Io, SafetensorsRoundTripAndMalformed) {
  SafeTensorsFile f;
  f.metadata = {{"k", "v"}};
  f.tensors.emplace_back("a", SafeTensor{{3, 5}, test::random_uniform(15, 1)});
  f.tensors.emplace_back("b", SafeTensor{{7}, test::random_uniform(7, 2)});
  write_safetensors(path("t.safetensors"), f);
  const SafeTensorsFile back = read_safetensors(path("t.safetensors"));
  EXPECT_EQ(back.metadata, f.metadata);
  ASSERT_NE(back.find("a"), nullptr);
  EXPECT_EQ(back.find("a")->data, f.tensors[0].second.data);
  EXPECT_EQ(back.find("b")->shape, std::vector<int64_t>{7});

  const std::string raw = read(path("t.safetensors"));
  write(path("cut.safetensors"), raw.substr(0, raw.size() - 4));
  expect_error([&] { read_safetensors(path("cut.safetensors")); }, {"cut.safetensors"});
  write(path("tiny.safetensors"), raw.substr(0, 5));
  expect_error([&] { read_safetensors(path("tiny.safetensors")); }, {"too short"});
  std::string bad_dtype = raw;
  bad_dtype.replace(bad_dtype.find("F32"), 3, "F16");
  write(path("dtype.safetensors"), bad_dtype);
  expect_error([&] { read_safetensors(path("dtype.safetensors")); }, {"dtype", "F16"});
  std::string bad_len = raw;
  bad_len[0] = static_cast<char>(0xff);
  bad_len[1] = static_cast<char>(0xff);
  write(path("len.safetensors"), bad_len);
  expect_error([&] { read_safetensors(path("len.safetensors")); }, {"header length"});
}

TrainConfig tiny_config() {
  TrainConfig c;
  c.model.input_dim = 12;
  c.model.image_height = 3;
  c.model.image_width = 4;
  c.model.hidden = {5, 3};
  c.model.latent = 2;
  c.model.decoder = DecoderKind::gaussian;
  c.model.activation = Activation::tanh;
  c.samples = 2;
  c.seed = 99;
  return c;
}

Checkpoint tiny_checkpoint(OptimizerKind optimizer = OptimizerKind::adam) {
  Checkpoint ck;
  ck.config = tiny_config();
  ck.config.optimizer = optimizer;
  const ParamLayout layout = make_layout(ck.config.model);
  ck.params = init_parameters(ck.config.model, layout, 3);
  // Random state on the tensors; the padding between them is zero, as a real optimizer's is.
  auto on_tensors = [&](const std::vector<float>& v) {
    std::vector<float> out(v.size(), 0.f);
    for (const auto& t : layout.tensors) {
      std::copy(v.begin() + t.offset, v.begin() + t.offset + t.count(), out.begin() + t.offset);
    }
    return out;
  };
  ck.optimizer_state.clear();
  for (size_t k = 0; k < optimizer_state_names(optimizer).size(); ++k) {
    ck.optimizer_state.push_back(on_tensors(test::random_uniform(layout.total, 4 + k, k == 0 ? -1.f : 0.f, 1)));
  }
  ck.step = 1234;
  ck.epoch = 3;
  return ck;
}

TEST_F(Io, CheckpointRoundTripWithPyTorchNames) {
  // Every optimizer's state under torch.optim's names: Adam exp_avg and exp_avg_sq, Adagrad sum,
  // SGD momentum_buffer.
  for (const auto& [kind, names] : {std::pair{OptimizerKind::adam, std::vector<std::string>{"exp_avg", "exp_avg_sq"}},
                                    {OptimizerKind::adagrad, std::vector<std::string>{"sum"}},
                                    {OptimizerKind::sgd, std::vector<std::string>{"momentum_buffer"}}}) {
    const Checkpoint ck = tiny_checkpoint(kind);
    ASSERT_EQ(ck.optimizer_state.size(), names.size());
    save_checkpoint(path("o.safetensors"), ck);
    const Checkpoint back = load_checkpoint(path("o.safetensors"));
    EXPECT_EQ(back.config.optimizer, kind);
    EXPECT_EQ(back.optimizer_state, ck.optimizer_state) << optimizer_name(kind);
    const SafeTensorsFile f = read_safetensors(path("o.safetensors"));
    for (const auto& n : names) {
      const SafeTensor* t = f.find("optimizer." + n + ".decoder.out.weight");
      ASSERT_NE(t, nullptr) << n;
      EXPECT_EQ(t->shape, (std::vector<int64_t>{12, 5})) << n;
    }
    size_t state_tensors = 0;
    for (const auto& t : f.tensors) state_tensors += t.first.rfind("optimizer.", 0) == 0;
    EXPECT_EQ(state_tensors, names.size() * make_layout(ck.config.model).tensors.size()) << optimizer_name(kind);
  }

  Checkpoint ck = tiny_checkpoint();
  ck.config.kl = KlTerm{KlEstimator::monte_carlo, 0.5f, 10, KlGradient::dreg};  // every KL field travels
  ck.config.objective = Objective::iwae;                                        // and the objective's
  ck.config.k = 7;
  save_checkpoint(path("c.safetensors"), ck);
  const Checkpoint back = load_checkpoint(path("c.safetensors"));
  EXPECT_EQ(back.config.objective, Objective::iwae);
  EXPECT_EQ(back.config.k, 7);
  EXPECT_EQ(back.config.kl.gradient, KlGradient::dreg);
  EXPECT_EQ(back.config.kl.estimator, KlEstimator::monte_carlo);
  EXPECT_EQ(back.config.kl.warmup, 10);
  EXPECT_EQ(back.params, ck.params);
  EXPECT_EQ(back.optimizer_state, ck.optimizer_state);
  EXPECT_EQ(back.step, 1234);
  EXPECT_EQ(back.epoch, 3);
  EXPECT_EQ(config_to_json(back.config), config_to_json(ck.config));

  const SafeTensorsFile f = read_safetensors(path("c.safetensors"));
  for (const char* name :
       {"encoder.layers.0.weight", "encoder.layers.1.bias", "encoder.mu.weight", "encoder.logvar.bias",
        "decoder.layers.0.weight", "decoder.layers.1.weight", "decoder.out.weight", "decoder.out_logvar.bias",
        "optimizer.exp_avg.encoder.mu.weight", "optimizer.exp_avg_sq.decoder.out.bias"}) {
    EXPECT_NE(f.find(name), nullptr) << name;
  }
  // nn.Linear layout: weight [out, in].
  EXPECT_EQ(f.find("encoder.layers.0.weight")->shape, (std::vector<int64_t>{5, 12}));
  EXPECT_EQ(f.find("decoder.layers.0.weight")->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(f.find("decoder.out_logvar.weight")->shape, (std::vector<int64_t>{12, 5}));
  EXPECT_NE(f.metadata.at("config").find("\"activation\":\"tanh\""), std::string::npos);
}

TEST_F(Io, CheckpointWrongNamesShapesAndTruncation) {
  const Checkpoint ck = tiny_checkpoint();
  save_checkpoint(path("c.safetensors"), ck);
  SafeTensorsFile f = read_safetensors(path("c.safetensors"));

  auto named = [](SafeTensorsFile& file, const std::string& name) -> std::pair<std::string, SafeTensor>& {
    for (auto& t : file.tensors)
      if (t.first == name) return t;
    throw std::runtime_error("no tensor " + name);
  };
  SafeTensorsFile renamed = f;
  named(renamed, "encoder.layers.0.weight").first = "encoder.layer.0.weight";
  write_safetensors(path("renamed.safetensors"), renamed);
  expect_error([&] { load_checkpoint(path("renamed.safetensors")); }, {"renamed.safetensors", "missing tensor"});

  SafeTensorsFile reshaped = f;
  named(reshaped, "encoder.layers.0.weight").second.shape = {12, 5};
  write_safetensors(path("reshaped.safetensors"), reshaped);
  expect_error([&] { load_checkpoint(path("reshaped.safetensors")); }, {"shape [12,5]", "expected [5,12]"});

  SafeTensorsFile no_meta = f;
  no_meta.metadata.erase("config");
  write_safetensors(path("nometa.safetensors"), no_meta);
  expect_error([&] { load_checkpoint(path("nometa.safetensors")); }, {"config"});

  SafeTensorsFile wide = f;  // a config the CLI could not have written: more latent dimensions than kMaxLatent
  std::string& config = wide.metadata.at("config");
  const size_t latent_at = config.find("\"latent\":");
  ASSERT_NE(latent_at, std::string::npos);
  config.replace(latent_at, config.find_first_of(",}", latent_at) - latent_at, "\"latent\":5000");
  write_safetensors(path("wide.safetensors"), wide);
  expect_error([&] { load_checkpoint(path("wide.safetensors")); },
               {"wide.safetensors", "5000 latent dimensions, more than 4096"});

  SafeTensorsFile extra = f;
  extra.tensors.emplace_back("stray", SafeTensor{{1}, {1.f}});
  write_safetensors(path("extra.safetensors"), extra);
  expect_error([&] { load_checkpoint(path("extra.safetensors")); }, {"unexpected tensor 'stray'"});

  const std::string raw = read(path("c.safetensors"));
  write(path("cut.safetensors"), raw.substr(0, raw.size() / 2));
  expect_error([&] { load_checkpoint(path("cut.safetensors")); }, {"cut.safetensors", "truncated"});
}

TEST_F(Io, FailedWriteLeavesTheGoodFile) {
  const Checkpoint ck = tiny_checkpoint();
  save_checkpoint(path("c.safetensors"), ck);
  const std::string before = read(path("c.safetensors"));
  // A tensor whose data does not fit its shape fails before anything is written.
  SafeTensorsFile bad;
  bad.tensors.emplace_back("a", SafeTensor{{4}, {1.f, 2.f}});
  EXPECT_THROW(write_safetensors(path("c.safetensors"), bad), Error);
  EXPECT_EQ(read(path("c.safetensors")), before);
  // A write into a folder that does not exist fails without a stray temp file.
  EXPECT_THROW(save_checkpoint(path("no/such/dir/c.safetensors"), ck), Error);
  size_t files = 0;
  for (auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);
}

// Text from a file in a message stays on one line and short.
TEST(Printable, EscapesBytesAndTruncates) {
  EXPECT_EQ(printable("<f4"), "<f4");
  EXPECT_EQ(printable(std::string("a\nb\x01\\c\xff", 7)), "a\\x0ab\\x01\\x5cc\\xff");
  const std::string long_text(100, 'x');
  EXPECT_EQ(printable(long_text), std::string(64, 'x') + "...");
}

// Sizes in headers are not trusted: shapes whose products overflow or exceed the file, and
// dimensions of 2^31 or more, are errors naming the file, not crashes or huge allocations.
TEST_F(Io, CraftedHeadersWithHugeShapesAreErrors) {
  auto npy = [&](const std::string& name, const std::string& descr, const std::string& shape, size_t body) {
    std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    h += std::string((64 - (10 + h.size() + 1) % 64) % 64, ' ') + "\n";
    std::string f = std::string("\x93NUMPY\x01\x00", 8);
    f += static_cast<char>(h.size() & 0xff);
    f += static_cast<char>(h.size() >> 8);
    write(path(name), f + h + std::string(body, '\0'));
    return path(name);
  };
  expect_error([&] { read_npy(npy("a.npy", "|u1", "(2147483648, 2147483648)", 16)); }, {"a.npy", "2^31"});
  expect_error([&] { read_npy(npy("b.npy", "<f4", "(4611686018427387904, 4)", 0)); }, {"b.npy", "2^31"});
  expect_error([&] { read_npy(npy("c.npy", "<f4", "(1000000, 65536, 65536)", 0)); }, {"c.npy", "2^31 or more pixels"});
  expect_error([&] { read_npy(npy("d.npy", "<f4", "(123456789012345678901234567890, 4)", 0)); }, {"d.npy", "2^31"});
  expect_error([&] { read_npy(npy("e.npy", "<f4", "(2147483647, 2147483647)", 64)); }, {"e.npy"});
  // An IDX header of 2^31 − 1 images of 65535 × 65535.
  std::string idx = std::string("\0\0\x08\x03\x7f\xff\xff\xff\0\0\xff\xff\0\0\xff\xff", 16) + std::string(16, '\0');
  write(path("big-idx3-ubyte"), idx);
  expect_error([&] { read_idx_images(path("big-idx3-ubyte")); }, {"big-idx3-ubyte", "implausible image size"});
  // safetensors tensors of 2^62 and 2^64 (wrapping to 0) elements with no data.
  auto st = [&](const std::string& name, const std::string& shape, size_t body) {
    const std::string h =
        R"({"a": {"dtype": "F32", "shape": )" + shape + R"(, "data_offsets": [0, )" + std::to_string(body) + "]}}";
    std::string f(8, '\0');
    for (int i = 0; i < 8; ++i) f[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    write(path(name), f + h + std::string(body, '\0'));
    return path(name);
  };
  expect_error([&] { read_safetensors(st("a.safetensors", "[2147483648, 2147483648]", 16)); },
               {"a.safetensors", "larger than the file"});
  expect_error([&] { read_safetensors(st("b.safetensors", "[4611686018427387904, 4]", 0)); },
               {"b.safetensors", "larger than any file"});
  EXPECT_EQ(read_safetensors(st("c.safetensors", "[5, 0]", 0)).tensors.size(), 1u);  // empty but valid
}

// Every write (checkpoint, PNG, NPY, IDX, metrics line) made to fail at each stage of its
// protocol (open, write after half the bytes, fsync, rename): the error names the file, the stage
// and the cause, the previous good file is intact, and no temporary file is left.
TEST_F(Io, InjectedWriteFailuresLeaveTheGoodFile) {
  const Checkpoint ck = tiny_checkpoint();
  const Dataset images = random_images(5, 4, 3, PixelType::u8);
  const std::vector<float> pixels = test::random_uniform(6 * 4 * 3, 3, 0, 1);
  const std::vector<std::pair<std::string, std::function<void(const std::string&)>>> writers = {
      {"c.safetensors", [&](const std::string& p) { save_checkpoint(p, ck); }},
      {"g.png", [&](const std::string& p) { write_png_grid(p, pixels, 6, 4, 3, 3); }},
      {"d.npy", [&](const std::string& p) { write_npy(p, images); }},
      {"d-idx3-ubyte", [&](const std::string& p) { write_idx_images(p, images); }},
      {"metrics.jsonl", [&](const std::string& p) { append_line_atomically(p, R"({"epoch":2,"test_elbo":-250.5})"); }},
  };
  const std::pair<WriteStage, const char*> stages[] = {{WriteStage::open, "open failed (Permission denied)"},
                                                       {WriteStage::write, "write failed (No space left on device)"},
                                                       {WriteStage::fsync, "fsync failed (Input/output error)"},
                                                       {WriteStage::rename, "rename failed (Read-only file system)"}};
  const int errors[] = {EACCES, ENOSPC, EIO, EROFS};
  for (const auto& [name, write_it] : writers) {
    const std::string p = path(name);
    if (name == "metrics.jsonl") {
      write(p, "{\"epoch\":1,\"test_elbo\":-260.25}\n");
    } else {
      write_it(p);
    }
    const std::string good = read(p);
    ASSERT_FALSE(good.empty());
    for (size_t s = 0; s < 4; ++s) {
      inject_write_failure(stages[s].first, errors[s], name);
      try {
        write_it(p);
        ADD_FAILURE() << name << ": the injected failure did not happen";
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(p + ": "), std::string::npos) << msg;
        EXPECT_NE(msg.find(stages[s].second), std::string::npos) << msg;
      }
      EXPECT_EQ(read(p), good) << name << " after a failure at stage " << s;
    }
    write_it(p);  // and without an injected failure it writes
    if (name == "metrics.jsonl") {
      EXPECT_EQ(read(p), good + "{\"epoch\":2,\"test_elbo\":-250.5}\n");
    }
  }
  for (auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << "stray " << e.path();
  }
}

TEST_F(Io, PngGridIsAValidPng) {
  const auto images = test::random_uniform(6 * 3 * 4, 8, 0, 1);
  write_png_grid(path("g.png"), images, 6, 3, 4, 4);
  const std::string png = read(path("g.png"));
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  // IHDR width and height: 4 columns of 4+1 pixels + 1, 2 rows of 3+1 + 1.
  auto be32 = [&](size_t at) {
    return (uint32_t(uint8_t(png[at])) << 24) | (uint32_t(uint8_t(png[at + 1])) << 16) |
           (uint32_t(uint8_t(png[at + 2])) << 8) | uint32_t(uint8_t(png[at + 3]));
  };
  EXPECT_EQ(be32(16), 21u);
  EXPECT_EQ(be32(20), 9u);
}

}  // namespace
}  // namespace vae
