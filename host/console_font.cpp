#include "console_font.h"

#include <cstdlib>

#include "dataset.h"  // read_file_maybe_gz
#include "runtime/check.h"

namespace vae {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what + " (not a PSF console font)");
}

uint32_t le32(const std::vector<uint8_t>& b, size_t at) {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (static_cast<uint32_t>(b[at + 3]) << 24);
}

// PSF 2's table: per glyph, UTF-8 code points up to 0xFF; 0xFE starts sequences (skipped).
void read_utf8_table(const std::vector<uint8_t>& b, size_t at, int count, ConsoleFont& f) {
  for (int g = 0; g < count && at < b.size(); ++g) {
    bool sequences = false;
    while (at < b.size() && b[at] != 0xFF) {
      if (b[at] == 0xFE) {
        sequences = true;
        ++at;
        continue;
      }
      const uint8_t lead = b[at];
      const int extra = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
      uint32_t c = extra == 0 ? lead : lead & (0x3F >> extra);
      for (int i = 1; i <= extra && at + i < b.size(); ++i) c = (c << 6) | (b[at + i] & 0x3F);
      at += 1 + extra;
      if (!sequences) f.glyph_of.emplace(c, g);
    }
    ++at;  // the 0xFF
  }
}

// PSF 1's table: per glyph, little-endian UCS-2 up to 0xFFFF; 0xFFFE starts sequences (skipped).
void read_ucs2_table(const std::vector<uint8_t>& b, size_t at, int count, ConsoleFont& f) {
  for (int g = 0; g < count && at + 1 < b.size(); ++g) {
    bool sequences = false;
    for (; at + 1 < b.size(); at += 2) {
      const uint32_t c = b[at] | (b[at + 1] << 8);
      if (c == 0xFFFF) break;
      if (c == 0xFFFE) sequences = true;
      if (!sequences) f.glyph_of.emplace(c, g);
    }
    at += 2;
  }
}

}  // namespace

ConsoleFont read_console_font(const std::string& path) {
  const std::vector<uint8_t> b = read_file_maybe_gz(path);
  ConsoleFont f;
  size_t glyphs_at = 0;
  int count = 0;
  bool table = false;
  if (b.size() >= 4 && b[0] == 0x36 && b[1] == 0x04) {  // PSF 1: 8 pixels wide
    const uint8_t mode = b[2];
    count = mode & 1 ? 512 : 256;
    table = (mode & 6) != 0;
    f.width = 8, f.height = b[3], f.row_bytes = 1;
    glyphs_at = 4;
  } else if (b.size() >= 32 && le32(b, 0) == 0x864AB572u) {  // PSF 2
    const uint32_t header = le32(b, 8), flags = le32(b, 12), n = le32(b, 16), size = le32(b, 20);
    const uint32_t height = le32(b, 24), width = le32(b, 28);
    if (width == 0 || width > 64 || height == 0 || height > 64 || n == 0 || n > 65536) fail(path, "bad glyph size");
    if (size != (width + 7) / 8 * height || header < 32 || header > b.size()) fail(path, "bad header");
    count = static_cast<int>(n);
    table = (flags & 1) != 0;
    f.width = static_cast<int>(width), f.height = static_cast<int>(height),
    f.row_bytes = static_cast<int>((width + 7) / 8);
    glyphs_at = header;
  } else {
    fail(path, "no PSF magic");
  }
  if (f.height == 0 || f.height > 64) fail(path, "bad glyph height");
  const size_t bytes = static_cast<size_t>(count) * f.height * f.row_bytes;
  if (b.size() < glyphs_at + bytes) fail(path, "truncated glyphs");
  f.glyphs.assign(b.begin() + glyphs_at, b.begin() + glyphs_at + bytes);
  if (table && b[0] == 0x36) read_ucs2_table(b, glyphs_at + bytes, count, f);
  if (table && b[0] != 0x36) read_utf8_table(b, glyphs_at + bytes, count, f);
  if (!table) {
    for (int g = 0; g < count; ++g) f.glyph_of.emplace(g, g);
  }
  if (!f.glyph_of.count('?')) fail(path, "no glyph for '?'");
  return f;
}

bool ConsoleFont::pixel(uint32_t c, int x, int y) const {
  if (x < 0 || y < 0 || x >= width || y >= height) return false;
  auto it = glyph_of.find(c);
  if (it == glyph_of.end()) it = glyph_of.find('?');
  const uint8_t row = glyphs[(static_cast<size_t>(it->second) * height + y) * row_bytes + x / 8];
  return (row >> (7 - x % 8)) & 1;
}

std::string default_console_font_path() {
  const char* env = std::getenv("VAE_FONT");
  return env && *env ? env : "/usr/share/consolefonts/Unifont-APL8x16.psf.gz";
}

}  // namespace vae
