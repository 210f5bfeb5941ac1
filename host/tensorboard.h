// TensorBoard event files: events.out.tfevents.<time>.<host> in a run folder, read by TensorBoard
// (its EventAccumulator) and by anything that reads TFRecords of tensorflow.Event protobufs.
//
// A record is the length (uint64, little-endian), the masked CRC32C of those 8 bytes, the
// serialized Event, and the masked CRC32C of the Event (TFRecord framing). The few protobuf
// messages needed (Event, Summary and its Value, Image, HistogramProto, SessionLog) are encoded
// here by hand — a dozen fields of four wire types — rather than generated from TensorBoard's
// .proto files with libprotobuf and protoc at build time; CRC32C is Boost's (boost/crc.hpp).
// Every record is written whole and flushed, so a run killed at any moment leaves a file whose
// whole records all read.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace vae {

// CRC32C (Castagnoli) and TFRecord's mask of it.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

class EventWriter {
 public:
  // A new file in dir (named for the time, the host and the process), opened with its
  // file_version event. A resumed run passes the first step it trains (its checkpoint's + 1): a
  // SessionLog START there tells TensorBoard to drop what older files hold from that step on (the
  // steps the earlier run took after its checkpoint, trained again now).
  explicit EventWriter(const std::string& dir, int64_t restart_step = -1);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  const std::string& path() const { return path_; }
  void scalar(const std::string& tag, int64_t step, double value);
  // An encoded PNG of width × height pixels (channels: 1 grey, 3 RGB, 4 RGBA).
  void image(const std::string& tag, int64_t step, const std::string& png, int width, int height, int channels = 1);
  // The values' histogram in TensorBoard's default buckets (edges ±1e-12 · 1.1^k and 0).
  void histogram(const std::string& tag, int64_t step, const std::vector<float>& values);

 private:
  void write_event(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace vae
