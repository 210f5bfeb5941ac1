// PSF 1 and 2 console fonts (vae report's text; $VAE_FONT names any file), plain or gzip.
#include "console_font.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vae::fuzz::as_file(data, size);
  vae::fuzz::expect_clean_rejection([&] {
    const vae::ConsoleFont f = vae::read_console_font(path);
    for (uint32_t c : {uint32_t{'A'}, uint32_t{0xE9}, uint32_t{0x10FFFF}})  // every glyph lookup in bounds
      for (int y = 0; y < f.height; ++y)
        for (int x = 0; x < f.width; ++x) (void)f.pixel(c, x, y);
  });
  return 0;
}
