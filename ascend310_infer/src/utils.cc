/**
 * Implementation of the SDK-independent helpers declared in utils.h.
 */
#include "utils.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>

namespace coupalign {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kBinSuffix = ".bin";

bool HasBinSuffix(std::string_view name) {
  return name.size() > kBinSuffix.size() && name.substr(name.size() - kBinSuffix.size()) == kBinSuffix;
}

/// A name from the index must be a plain file stem: no folder part, so an index cannot point outside input_dir.
bool IsPlainName(const std::string &name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos;
}

/// Parses a whole string as a non-negative integer no larger than `max_value`.
uint64_t ParseNonNegative(const std::string &flag, const std::string &text, uint64_t max_value) {
  uint64_t value = 0;
  const char *begin = text.data();
  const char *end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value > max_value) {
    throw UsageError("invalid value '" + text + "' for " + flag + ": expected an integer in [0, " +
                     std::to_string(max_value) + "]");
  }
  return value;
}

/// Maps a case-insensitive device name to its canonical spelling.
std::string NormalizeDeviceType(const std::string &text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "ascend") {
    return "Ascend";
  }
  if (lower == "cpu") {
    return "CPU";
  }
  if (lower == "gpu") {
    // Lite 2.0's cloud runtime had an NVIDIA GPU backend; the 2.10 cloud runtime the MINDIR needs lists
    // Ascend and CPU only, so a GPU device description would fail deep inside Model::Build.
    throw UsageError("--device_type GPU is not supported: MindSpore Lite 2.10's cloud inference runs on Ascend "
                     "and CPU only (no NVIDIA GPU backend). On a GPU, run the MINDIR with MindSpore itself: "
                     "python tools/run_mindir_bins.py --device_target GPU --mindir_path M --input_dir PRE "
                     "--output_dir RES");
  }
  throw UsageError("invalid value '" + text + "' for --device_type: expected Ascend or CPU");
}

std::string ParsePrecisionMode(const std::string &text) {
  if (std::find(kPrecisionModes.begin(), kPrecisionModes.end(), text) != kPrecisionModes.end()) {
    return text;
  }
  std::string choices;
  for (const auto &mode : kPrecisionModes) {
    choices += (choices.empty() ? "" : ", ") + mode;
  }
  throw UsageError("invalid value '" + text + "' for --precision_mode: expected one of " + choices);
}

/// Value at nearest rank `ceil(q * n)` (1-based) of an ascending, non-empty vector.
double NearestRank(const std::vector<double> &sorted, double q) {
  const auto n = sorted.size();
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(n)));
  rank = std::clamp<std::size_t>(rank, 1, n);
  return sorted[rank - 1];
}

}  // namespace

const std::vector<std::string> kPrecisionModes = {"preferred_fp32", "enforce_fp32", "enforce_fp16", "enforce_origin",
                                                  "preferred_optimal"};

std::string UsageText(const std::string &program) {
  std::ostringstream out;
  out << "CoupAlign MindIR inference with the MindSpore Lite runtime (Ascend 310 / CPU).\n"
      << "\n"
      << "Usage: " << program << " --mindir_path=FILE --input_dir=DIR --output_dir=DIR [options]\n"
      << "\n"
      << "Required:\n"
      << "  --mindir_path PATH   exported MINDIR model (static batch B)\n"
      << "  --input_dir DIR      preprocess.py's output: samples.txt (one '<sample> <image>' line per sample,\n"
      << "                       in the order run), 00_image/<image>.bin (float32 1x3xHxW, one per image),\n"
      << "                       01_input_ids/<sample>.bin and 02_attention_mask/<sample>.bin (int32 1xT)\n"
      << "  --output_dir DIR     receives <sample>_<k>.bin (output k as float32; float16 outputs are converted,\n"
      << "                       other types refused) per sample\n"
      << "                       and latency.txt; created if missing\n"
      << "Options:\n"
      << "  --device_type TYPE   Ascend | CPU (default Ascend); Lite 2.10 has no NVIDIA GPU backend\n"
      << "  --device_id N        accelerator index (default 0)\n"
      << "  --precision_mode M   Ascend operator precision (default preferred_fp32; ignored on CPU):\n"
      << "                       preferred_fp32 | enforce_fp32 | enforce_fp16 | enforce_origin | preferred_optimal.\n"
      << "                       Lite's own default, enforce_fp16, computes the deformable sampling's\n"
      << "                       locations in float16 too (1/32 pixel on a 60x60 map; integers above 2048\n"
      << "                       only if even); preferred_fp32 keeps element-wise operators in float32\n"
      << "                       (matrix products may use float16)\n"
      << "  --cpu_threads N      runtime thread count, 0 keeps the runtime default (default 0)\n"
      << "  -h, --help           print this help and exit\n"
      << "\n"
      << "A MINDIR exported with batch B > 1 runs B samples per Predict; the last batch is padded with\n"
      << "copies of its last sample, whose outputs are not written.\n"
      << "Exit status: 0 on success, 1 on a runtime or data error, 2 on a usage error.\n"
      << "The runtime logs through glog; GLOG_v=3 keeps only its errors.\n";
  return out.str();
}

Options ParseArgs(int argc, const char *const argv[]) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg(argv[i]);
    if (arg == "-h" || arg == "--help") {
      options.show_help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      throw UsageError("unexpected argument '" + arg + "'");
    }
    std::string name;
    std::string value;
    const auto eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else {
      name = arg;
      if (i + 1 >= argc) {
        throw UsageError("missing value for " + name);
      }
      value = argv[++i];
    }

    if (name == "--mindir_path") {
      options.mindir_path = value;
    } else if (name == "--input_dir") {
      options.input_dir = value;
    } else if (name == "--output_dir") {
      options.output_dir = value;
    } else if (name == "--device_type") {
      options.device_type = NormalizeDeviceType(value);
    } else if (name == "--precision_mode") {
      options.precision_mode = ParsePrecisionMode(value);
    } else if (name == "--device_id") {
      options.device_id =
          static_cast<uint32_t>(ParseNonNegative(name, value, std::numeric_limits<uint32_t>::max()));
    } else if (name == "--cpu_threads") {
      options.cpu_threads = static_cast<int>(ParseNonNegative(name, value, 1024));
    } else {
      throw UsageError("unknown option '" + name + "'");
    }
  }
  if (options.show_help) {
    return options;
  }
  for (const auto &[flag, value] : {std::pair<const char *, const std::string &>{"--mindir_path", options.mindir_path},
                                    {"--input_dir", options.input_dir},
                                    {"--output_dir", options.output_dir}}) {
    if (value.empty()) {
      throw UsageError(std::string("missing required option ") + flag);
    }
  }
  return options;
}

std::vector<std::string> ListBinFiles(const fs::path &dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw InferError("input folder not found: " + dir.string());
  }
  std::vector<std::string> names;
  for (const auto &entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (HasBinSuffix(name) && entry.is_regular_file()) {
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<SampleEntry> ReadSampleIndex(const fs::path &path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw InferError("sample index not found: " + path.string() +
                     " (preprocess.py writes it: one '<sample name> <image name>' per line)");
  }
  std::ifstream in(path);
  if (!in) {
    throw InferError("cannot open " + path.string());
  }
  std::vector<SampleEntry> entries;
  std::set<std::string> seen;
  std::string text;
  std::size_t line_number = 0;
  while (std::getline(in, text)) {
    ++line_number;
    if (!text.empty() && text.back() == '\r') {  // an index edited on Windows
      text.pop_back();
    }
    std::istringstream fields(text);
    std::string name;
    std::string image;
    std::string extra;
    if (!(fields >> name) || name.front() == '#') {
      continue;  // blank or comment
    }
    const std::string where = path.string() + " line " + std::to_string(line_number);
    if (!(fields >> image) || (fields >> extra)) {
      throw InferError(where + ": expected '<sample name> <image name>', got '" + text + "'");
    }
    for (const std::string *value : {&name, &image}) {
      if (!IsPlainName(*value) || HasBinSuffix(*value)) {
        throw InferError(where + ": '" + *value + "' is not a plain file name without folder or .bin suffix");
      }
    }
    if (!seen.insert(name).second) {
      throw InferError(where + ": sample '" + name + "' is listed twice");
    }
    entries.push_back(SampleEntry{name, image, line_number});
  }
  if (in.bad()) {
    throw InferError("failed to read " + path.string());
  }
  if (entries.empty()) {
    throw InferError("sample index " + path.string() + " lists no samples");
  }
  return entries;
}

void CheckSampleFiles(const fs::path &input_dir, const fs::path &index_path, const std::vector<SampleEntry> &entries,
                      const std::vector<std::string> &sample_subdirs, const std::string &image_subdir) {
  std::set<std::string> listed;
  for (const auto &entry : entries) {
    listed.insert(entry.name + std::string(kBinSuffix));
  }
  for (const auto &subdir : sample_subdirs) {
    const std::vector<std::string> present = ListBinFiles(input_dir / subdir);
    for (const auto &entry : entries) {
      const std::string file_name = entry.name + std::string(kBinSuffix);
      if (!std::binary_search(present.begin(), present.end(), file_name)) {
        throw InferError("input file missing: " + (input_dir / subdir / file_name).string() + " (sample '" +
                         entry.name + "', " + index_path.string() + " line " + std::to_string(entry.line) + "; " +
                         subdir + " has " + std::to_string(present.size()) + " of the " +
                         std::to_string(entries.size()) + " samples listed)");
      }
    }
    for (const auto &file_name : present) {
      if (listed.count(file_name) == 0) {
        throw InferError((input_dir / subdir / file_name).string() + " is not listed in " + index_path.string() +
                         ": the folder holds files of another preprocessing run; re-run preprocess.py into an "
                         "empty folder");
      }
    }
  }
  std::set<std::string> checked_images;
  for (const auto &entry : entries) {
    if (!checked_images.insert(entry.image).second) {
      continue;
    }
    const fs::path image_path = input_dir / image_subdir / (entry.image + std::string(kBinSuffix));
    std::error_code ec;
    if (!fs::is_regular_file(image_path, ec)) {
      throw InferError("input file missing: " + image_path.string() + " (image of sample '" + entry.name + "', " +
                       index_path.string() + " line " + std::to_string(entry.line) + ")");
    }
  }
}

void ReadBinaryInto(const fs::path &path, void *dst, std::size_t num_bytes) {
  std::error_code ec;
  const auto actual = fs::file_size(path, ec);
  if (ec) {
    throw InferError("cannot stat " + path.string() + ": " + ec.message());
  }
  if (actual != num_bytes) {
    throw InferError("size mismatch for " + path.string() + ": expected " + std::to_string(num_bytes) +
                     " bytes, got " + std::to_string(actual) + " bytes");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw InferError("cannot open " + path.string());
  }
  in.read(static_cast<char *>(dst), static_cast<std::streamsize>(num_bytes));
  if (in.gcount() != static_cast<std::streamsize>(num_bytes)) {
    throw InferError("short read from " + path.string());
  }
}

void WriteBinary(const fs::path &path, const void *data, std::size_t num_bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    throw InferError("cannot open " + path.string() + " for writing");
  }
  out.write(static_cast<const char *>(data), static_cast<std::streamsize>(num_bytes));
  if (!out) {
    throw InferError("failed to write " + path.string());
  }
}

std::string StripBinSuffix(const std::string &file_name) {
  if (HasBinSuffix(file_name)) {
    return file_name.substr(0, file_name.size() - kBinSuffix.size());
  }
  return file_name;
}

float HalfBitsToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  uint32_t out = 0;
  if (exponent == 0x1fu) {
    out = sign | 0x7f800000u | (mantissa << 13);  // infinity, or NaN keeping its payload
  } else if (exponent != 0) {
    out = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);  // normal: re-bias the exponent
  } else if (mantissa != 0) {
    // Subnormal: mantissa x 2^-24, a normal float32; ldexp is exact here.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  } else {
    out = sign;  // signed zero
  }
  float value = 0.0f;
  std::memcpy(&value, &out, sizeof(value));
  return value;
}

void HalfToFloat(const uint16_t *src, float *dst, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    dst[i] = HalfBitsToFloat(src[i]);
  }
}

LatencyStats SummarizeLatencies(const std::vector<double> &latencies_ms) {
  LatencyStats stats;
  if (latencies_ms.empty()) {
    return stats;
  }
  std::vector<double> sorted(latencies_ms);
  std::sort(sorted.begin(), sorted.end());
  stats.count = sorted.size();
  stats.total_ms = std::accumulate(sorted.begin(), sorted.end(), 0.0);
  stats.mean_ms = stats.total_ms / static_cast<double>(stats.count);
  stats.min_ms = sorted.front();
  stats.max_ms = sorted.back();
  stats.p50_ms = NearestRank(sorted, 0.5);
  stats.p90_ms = NearestRank(sorted, 0.9);
  return stats;
}

}  // namespace coupalign
