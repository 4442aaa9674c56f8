/**
 * Test driver for coupalign::HalfToFloat (utils.cc), built without the Lite SDK by
 * tests/test_ascend310_build.py: reads a file of float16 bit patterns (native byte order) and writes the
 * float32 values the inference program would write for them.
 *
 *   half_to_float IN.f16 OUT.f32
 */
#include <cstdint>
#include <exception>
#include <filesystem>
#include <iostream>
#include <vector>

#include "utils.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    std::cerr << "usage: " << (argc > 0 ? argv[0] : "half_to_float") << " IN.f16 OUT.f32\n";
    return 2;
  }
  try {
    const std::filesystem::path in(argv[1]);
    const auto bytes = std::filesystem::file_size(in);
    if (bytes % sizeof(uint16_t) != 0) {
      throw coupalign::InferError(in.string() + ": odd byte count " + std::to_string(bytes));
    }
    std::vector<uint16_t> half(bytes / sizeof(uint16_t));
    coupalign::ReadBinaryInto(in, half.data(), bytes);
    std::vector<float> full(half.size());
    coupalign::HalfToFloat(half.data(), full.data(), half.size());
    coupalign::WriteBinary(argv[2], full.data(), full.size() * sizeof(float));
  } catch (const std::exception &error) {
    std::cerr << "error: " << error.what() << '\n';
    return 1;
  }
  return 0;
}
