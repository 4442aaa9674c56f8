/**
 * Helpers of the CoupAlign C++ inference program that do not depend on the
 * MindSpore Lite API: command-line parsing, the sample index, raw binary I/O
 * and latency statistics. Keeping them free of Lite types lets them be read
 * (and reasoned about) without the SDK.
 */
#ifndef COUPALIGN_ASCEND310_INFER_SRC_UTILS_H_
#define COUPALIGN_ASCEND310_INFER_SRC_UTILS_H_

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace coupalign {

/// An error whose message is meant for the user; main() prints it to stderr and exits with status 1.
class InferError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A malformed command line; main() prints it with a hint to --help and exits with status 2.
class UsageError : public InferError {
 public:
  using InferError::InferError;
};

/// Parsed command-line options.
struct Options {
  std::string mindir_path;
  std::string input_dir;
  std::string output_dir;
  std::string device_type = "Ascend";  // normalised to one of "Ascend", "CPU"
  uint32_t device_id = 0;
  // Lite's Ascend precision mode (AscendDeviceInfo::SetPrecisionMode); unused on CPU. See kPrecisionModes.
  std::string precision_mode = "preferred_fp32";
  int cpu_threads = 0;  // 0 keeps the runtime's default thread count
  bool show_help = false;
};

/// The precision modes Lite's AscendDeviceInfo accepts (its context.h lists them), the default first.
/// Lite maps them onto CANN's operator precision modes: enforce_fp32 -> force_fp32, preferred_fp32 ->
/// allow_fp32_to_fp16, enforce_fp16 -> force_fp16, enforce_origin -> must_keep_origin_dtype,
/// preferred_optimal -> allow_mix_precision. Lite's own default is enforce_fp16.
extern const std::vector<std::string> kPrecisionModes;

/// Help text listing every flag.
std::string UsageText(const std::string &program);

/// Parses `--flag=value` and `--flag value` forms. Throws UsageError on unknown flags, missing values,
/// malformed numbers, an unknown device type or precision mode, or a missing required flag (unless --help
/// was given). `--device_type GPU` is refused with the reason (MindSpore Lite 2.10 has no NVIDIA GPU backend).
Options ParseArgs(int argc, const char *const argv[]);

/// Sorted names (not paths) of the regular `*.bin` files in `dir`. Throws InferError if `dir` is not a directory.
std::vector<std::string> ListBinFiles(const std::filesystem::path &dir);

/// One sample of the index file written by preprocess.py: the name of its sentence inputs
/// (`01_input_ids/<name>.bin`, `02_attention_mask/<name>.bin`) and of the image it is run on
/// (`00_image/<image>.bin`, shared by every sample of that image). Names carry no `.bin` suffix.
struct SampleEntry {
  std::string name;
  std::string image;
  std::size_t line = 0;  // 1-based line in the index file, for error messages
};

/// Reads the index file: one `<sample name> <image name>` per line, in the order to run them; blank lines and
/// lines starting with '#' are skipped. Throws InferError naming the file (and line) if it is missing, empty,
/// has a line that is not exactly two names, a name that is not a plain file name, or a sample listed twice.
std::vector<SampleEntry> ReadSampleIndex(const std::filesystem::path &path);

/// Checks that the files of every indexed sample exist: `input_dir/<subdir>/<name>.bin` for each of
/// `sample_subdirs` and `input_dir/<image_subdir>/<image>.bin`. Throws InferError naming the first missing file
/// and the index line that asks for it, or a `.bin` in a sample folder that the index does not list (leftovers
/// of another preprocessing run would otherwise be silently ignored).
void CheckSampleFiles(const std::filesystem::path &input_dir, const std::filesystem::path &index_path,
                      const std::vector<SampleEntry> &entries, const std::vector<std::string> &sample_subdirs,
                      const std::string &image_subdir);

/// Reads exactly `num_bytes` bytes of `path` into `dst`; throws InferError if the file size differs or reading fails.
void ReadBinaryInto(const std::filesystem::path &path, void *dst, std::size_t num_bytes);

/// Writes `num_bytes` bytes to `path` (truncating it); throws InferError on failure.
void WriteBinary(const std::filesystem::path &path, const void *data, std::size_t num_bytes);

/// `"sample.bin"` -> `"sample"`; names without the `.bin` suffix are returned unchanged.
std::string StripBinSuffix(const std::string &file_name);

/// IEEE 754 binary16 (the bit pattern of one float16 value) -> float32, exactly: every float16 value,
/// subnormals, infinities and NaNs included, is representable in float32.
float HalfBitsToFloat(uint16_t bits);

/// Converts `count` float16 values (their bit patterns, native byte order) to float32 into `dst`.
/// Used when the runtime hands back float16 outputs (an Ascend precision mode that lowers the last
/// operator to float16): the files this program writes are always float32, what postprocess.py reads.
void HalfToFloat(const uint16_t *src, float *dst, std::size_t count);

/// Summary of per-sample latencies, all in milliseconds.
struct LatencyStats {
  std::size_t count = 0;
  double total_ms = 0.0;
  double mean_ms = 0.0;
  double min_ms = 0.0;
  double max_ms = 0.0;
  double p50_ms = 0.0;  // nearest-rank percentiles
  double p90_ms = 0.0;
};

/// Statistics of `latencies_ms`; an empty input gives all zeros.
LatencyStats SummarizeLatencies(const std::vector<double> &latencies_ms);

}  // namespace coupalign

#endif  // COUPALIGN_ASCEND310_INFER_SRC_UTILS_H_
