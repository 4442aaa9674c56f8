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
