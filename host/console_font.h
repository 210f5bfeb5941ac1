// A bitmap console font (PSF 1 or 2, as Debian ships them under /usr/share/consolefonts, plain or
// gzipped), for the text of the plots vae report draws: no font rendering library needed.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vae {

struct ConsoleFont {
  int width = 0, height = 0;         // pixels of every glyph
  int row_bytes = 0;                 // bytes of a glyph's row, most significant bit leftmost
  std::vector<uint8_t> glyphs;       // (glyph count, height, row_bytes)
  std::map<uint32_t, int> glyph_of;  // the font's Unicode table; without one, glyph i is code point i
  // Whether pixel (x, y) of code point c's glyph is set ('?' for a code point the font lacks).
  bool pixel(uint32_t c, int x, int y) const;
};

// Reads a PSF 1 or PSF 2 file (gzipped or not). Throws vae::Error naming the file and the problem.
ConsoleFont read_console_font(const std::string& path);
// The font vae report draws with: $VAE_FONT if set, else GNU Unifont's console version (Debian's
// psf-unifont package, which cmake/setup.sh installs).
std::string default_console_font_path();

}  // namespace vae
