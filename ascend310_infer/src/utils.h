/**
 * Helpers of the CoupAlign C++ inference program that do not depend on the
 * MindSpore Lite API: command-line parsing, sample discovery, raw binary I/O
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
  std::string device_type = "Ascend";  // normalised to one of "Ascend", "GPU", "CPU"
  uint32_t device_id = 0;
  int cpu_threads = 0;  // 0 keeps the runtime's default thread count
  bool show_help = false;
};

/// Help text listing every flag.
std::string UsageText(const std::string &program);

/// Parses `--flag=value` and `--flag value` forms. Throws UsageError on unknown flags, missing values,
/// malformed numbers, an unknown device type or a missing required flag (unless --help was given).
Options ParseArgs(int argc, const char *const argv[]);

/// Sorted names (not paths) of the regular `*.bin` files in `dir`. Throws InferError if `dir` is not a directory.
std::vector<std::string> ListBinFiles(const std::filesystem::path &dir);

/// Checks that every `input_dir/<subdir>` holds exactly the same `*.bin` names and returns them sorted.
/// Throws InferError naming the first file missing from one of the folders, or if the folders are empty.
std::vector<std::string> MatchSampleNames(const std::filesystem::path &input_dir,
                                          const std::vector<std::string> &subdirs);

/// Reads exactly `num_bytes` bytes of `path` into `dst`; throws InferError if the file size differs or reading fails.
void ReadBinaryInto(const std::filesystem::path &path, void *dst, std::size_t num_bytes);

/// Writes `num_bytes` bytes to `path` (truncating it); throws InferError on failure.
void WriteBinary(const std::filesystem::path &path, const void *data, std::size_t num_bytes);

/// `"sample.bin"` -> `"sample"`; names without the `.bin` suffix are returned unchanged.
std::string StripBinSuffix(const std::string &file_name);

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
