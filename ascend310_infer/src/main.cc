/**
 * CoupAlign referring-segmentation inference on the MindSpore Lite C++ runtime.
 *
 * Loads an exported MINDIR (static batch B) on Ascend 310 or CPU and feeds it the raw tensors that the
 * Python preprocessing wrote: samples.txt lists the samples in order, each with the image it runs on; an image
 * is stored once (00_image/<image>.bin, float32 1x3xHxW) however many sentences refer to it, the sentence
 * inputs once per sample (01_input_ids/<sample>.bin, 02_attention_mask/<sample>.bin, int32 1xT). B samples are
 * stacked per Predict (the last batch padded with copies of its last sample, whose outputs are dropped); every
 * output tensor is split back per sample and written as float32 (a float16 output, which an Ascend precision
 * mode can produce, is converted; postprocess.py reads float32), and the Predict latency is reported.
 * Image decoding and resizing deliberately stay in Python so this program needs nothing but the Lite API.
 */
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"
#include "utils.h"

namespace coupalign {
namespace {

namespace fs = std::filesystem;

/// One model input: the sub-folder of --input_dir holding its .bin files, the element type it must have, and
/// whether a file holds one image (named by samples.txt, shared by that image's samples) or one sample.
struct InputSpec {
  const char *subdir;
  mindspore::DataType dtype;
  bool per_image;
};

/// Model inputs in the positional order of the exported network's construct(image, input_ids, attention_mask).
constexpr std::array<InputSpec, 3> kInputSpecs = {{
    {"00_image", mindspore::DataType::kNumberTypeFloat32, true},
    {"01_input_ids", mindspore::DataType::kNumberTypeInt32, false},
    {"02_attention_mask", mindspore::DataType::kNumberTypeInt32, false},
}};

constexpr const char *kIndexFileName = "samples.txt";
constexpr const char *kLatencyFileName = "latency.txt";

std::string DataTypeName(mindspore::DataType dtype) {
  switch (dtype) {
    case mindspore::DataType::kNumberTypeBool:
      return "bool";
    case mindspore::DataType::kNumberTypeInt8:
      return "int8";
    case mindspore::DataType::kNumberTypeInt16:
      return "int16";
    case mindspore::DataType::kNumberTypeInt32:
      return "int32";
    case mindspore::DataType::kNumberTypeInt64:
      return "int64";
    case mindspore::DataType::kNumberTypeUInt8:
      return "uint8";
    case mindspore::DataType::kNumberTypeFloat16:
      return "float16";
    case mindspore::DataType::kNumberTypeFloat32:
      return "float32";
    case mindspore::DataType::kNumberTypeFloat64:
      return "float64";
    default:
      return "dtype#" + std::to_string(static_cast<int>(dtype));
  }
}

std::string ShapeToString(const std::vector<int64_t> &shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) {
    out << (i == 0 ? "" : ", ") << shape[i];
  }
  out << ']';
  return out.str();
}

/// "'img' (float32 [2, 3, 480, 480], 5529600 bytes)"
std::string DescribeTensor(const mindspore::MSTensor &tensor) {
  return "'" + tensor.Name() + "' (" + DataTypeName(tensor.DataType()) + " " + ShapeToString(tensor.Shape()) +
         ", " + std::to_string(tensor.DataSize()) + " bytes)";
}

/// Throws an InferError "<what>: <status text> (status 0x...)". Lite's status text is often generic; the
/// runtime logs the actual cause to stderr just before (e.g. a MINDIR newer than the runtime can parse).
void ThrowIfError(const mindspore::Status &status, const std::string &what) {
  if (status.IsOk()) {
    return;
  }
  std::ostringstream message;
  message << what << ": " << status.ToString();
  const std::string description = status.GetErrDescription();
  if (!description.empty() && description != status.ToString()) {
    message << " - " << description;
  }
  message << " (status 0x" << std::hex << static_cast<uint32_t>(status.StatusCode()) << std::dec
          << "; the runtime log above gives the cause)";
  throw InferError(message.str());
}

/// Context holding exactly one device description, selected by --device_type (Ascend or CPU: ParseArgs refuses
/// GPU, which Lite 2.10's cloud runtime does not have).
std::shared_ptr<mindspore::Context> MakeContext(const Options &options) {
  auto context = std::make_shared<mindspore::Context>();
  if (options.cpu_threads > 0) {
    context->SetThreadNum(options.cpu_threads);
  }
  auto &devices = context->MutableDeviceInfo();
  if (options.device_type == "Ascend") {
    auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
    ascend->SetDeviceID(options.device_id);
    // Without it Lite compiles the graph with enforce_fp16 (see utils.h, kPrecisionModes, and --help).
    ascend->SetPrecisionMode(options.precision_mode);
    devices.push_back(ascend);
  } else {
    devices.push_back(std::make_shared<mindspore::CPUDeviceInfo>());
  }
  return context;
}

/// Checks input count and element types, then that every sample file has exactly the byte size of its input,

/// The .bin file that feeds model input `k` for `entry`.
fs::path InputFile(const fs::path &input_dir, std::size_t k, const SampleEntry &entry) {
  const std::string &stem = kInputSpecs[k].per_image ? entry.image : entry.name;
  return input_dir / kInputSpecs[k].subdir / (stem + ".bin");
}

/// Checks the input count and element types against what preprocess.py writes.
void ValidateInputTypes(const std::vector<mindspore::MSTensor> &model_inputs) {
  if (model_inputs.size() != kInputSpecs.size()) {
    std::string found;
    for (const auto &tensor : model_inputs) {
      found += "\n  " + DescribeTensor(tensor);
    }
    throw InferError("the model has " + std::to_string(model_inputs.size()) + " inputs, expected " +
                     std::to_string(kInputSpecs.size()) + " (image, input_ids, attention_mask):" + found);
  }
  for (std::size_t k = 0; k < kInputSpecs.size(); ++k) {
    if (model_inputs[k].DataType() != kInputSpecs[k].dtype) {
      throw InferError("model input " + std::to_string(k) + " " + DescribeTensor(model_inputs[k]) + " fed from " +
                       kInputSpecs[k].subdir + "/ must be " + DataTypeName(kInputSpecs[k].dtype));
    }
  }
}

/// The static batch size B of the model: the leading dimension, which every input must share.
int64_t BatchSize(const std::vector<mindspore::MSTensor> &model_inputs) {
  int64_t batch = 0;
  for (std::size_t k = 0; k < model_inputs.size(); ++k) {
    const std::vector<int64_t> shape = model_inputs[k].Shape();
    const std::string what = "model input " + std::to_string(k) + " " + DescribeTensor(model_inputs[k]);
    if (shape.empty()) {
      throw InferError(what + " has no batch dimension; expected the (B, ...) inputs export.py writes");
    }
    for (const int64_t dim : shape) {
      if (dim <= 0) {
        throw InferError(what + " has a dynamic dimension; export a static shape (export.py --batch_size B)");
      }
    }
    if (k == 0) {
      batch = shape.front();
    } else if (shape.front() != batch) {
      throw InferError(what + " has batch " + std::to_string(shape.front()) + " but model input 0 " +
                       DescribeTensor(model_inputs[0]) + " has batch " + std::to_string(batch) +
                       "; all inputs must share the leading batch dimension");
    }
  }
  return batch;
}

/// Checks that every input file holds exactly one sample of its model input (1/B of the batched tensor) before
/// anything runs, so a bad dataset fails fast with the offending file named. An image shared by several
/// samples is checked once.
void ValidateInputSizes(const std::vector<mindspore::MSTensor> &model_inputs, const fs::path &input_dir,
                        const std::vector<SampleEntry> &entries, int64_t batch) {
  std::set<std::string> checked;
  for (const auto &entry : entries) {
    for (std::size_t k = 0; k < kInputSpecs.size(); ++k) {
      const fs::path path = InputFile(input_dir, k, entry);
      if (!checked.insert(path.string()).second) {
        continue;
      }
      std::error_code ec;
      const auto actual = fs::file_size(path, ec);
      if (ec) {
        throw InferError("cannot stat " + path.string() + ": " + ec.message());
      }
      const auto expected = model_inputs[k].DataSize() / static_cast<std::size_t>(batch);
      if (actual != expected) {
        throw InferError("size mismatch for " + path.string() + ": expected " + std::to_string(expected) +
                         " bytes, got " + std::to_string(actual) + " bytes (one sample of model input " +
                         std::to_string(k) + " " + DescribeTensor(model_inputs[k]) +
                         "; were the inputs preprocessed with the config the MINDIR was exported with?)");
      }
    }
  }
}

/// Refuses an output whose elements are neither float32 nor float16, naming its type: the files this program
/// writes are float32, the type postprocess.py reads.
void CheckOutputType(const mindspore::MSTensor &output, std::size_t k, const std::string &what) {
  const mindspore::DataType dtype = output.DataType();
  if (dtype != mindspore::DataType::kNumberTypeFloat32 && dtype != mindspore::DataType::kNumberTypeFloat16) {
    throw InferError("output " + std::to_string(k) + " " + DescribeTensor(output) + " of " + what + " is " +
                     DataTypeName(dtype) + "; this program writes float32 files (converting float16), the type "
                     "postprocess.py reads. Was the MINDIR converted with another output type?");
  }
}

/// One output's elements as float32, whatever float type the runtime returned: float32 as is, float16
/// converted (an Ascend precision mode such as enforce_fp16 can leave the last operator in float16; written
/// raw, postprocess.py would read half as many values as it expects).
class Float32Output {
 public:
  Float32Output(const mindspore::MSTensor &output, std::size_t k, const std::string &what) : data_(output.Data()) {
    CheckOutputType(output, k, what);
    if (data_ == nullptr) {
      throw InferError("output " + std::to_string(k) + " of " + what + " has no data");
    }
    if (output.DataType() == mindspore::DataType::kNumberTypeFloat16) {
      converted_.resize(output.DataSize() / sizeof(uint16_t));
      HalfToFloat(static_cast<const uint16_t *>(data_.get()), converted_.data(), converted_.size());
    }
  }

  const char *bytes() const {
    return converted_.empty() ? static_cast<const char *>(data_.get())
                              : reinterpret_cast<const char *>(converted_.data());
  }

  /// Bytes of float32 data per byte the runtime returned: 2 after a float16 conversion, else 1.
  std::size_t growth() const { return converted_.empty() ? 1 : sizeof(float) / sizeof(uint16_t); }

 private:
  std::shared_ptr<const void> data_;  // keeps the runtime's buffer alive
  std::vector<float> converted_;
};

/// Bytes of one sample's share of `output`. With B > 1 the output must carry the batch as its leading
/// dimension, or there is no way to tell the samples' results apart.
std::size_t SampleSliceBytes(const mindspore::MSTensor &output, std::size_t k, int64_t batch) {
  if (batch == 1) {
    return output.DataSize();
  }
  const std::vector<int64_t> shape = output.Shape();
  if (shape.empty() || shape.front() != batch || output.DataSize() % static_cast<std::size_t>(batch) != 0) {
    throw InferError("output " + std::to_string(k) + " " + DescribeTensor(output) + " has no leading batch " +
                     "dimension of " + std::to_string(batch) + ": it cannot be split per sample");
  }
  return output.DataSize() / static_cast<std::size_t>(batch);
}

/// The samples one Predict ran: entries [first, first + count); the batch's other slots were padding.
struct BatchRun {
  std::size_t first = 0;
  std::size_t count = 0;
  double latency_ms = 0.0;
};

void WriteLatencyReport(const fs::path &path, const Options &options, int64_t batch_size,
                        const std::vector<SampleEntry> &entries, const std::vector<BatchRun> &batches) {
  std::vector<double> latencies_ms;
  for (const auto &run : batches) {
    latencies_ms.push_back(run.latency_ms);
  }
  const LatencyStats all = SummarizeLatencies(latencies_ms);
  const double seconds = all.total_ms / 1000.0;
  const double samples_per_s = seconds > 0.0 ? static_cast<double>(entries.size()) / seconds : 0.0;

  std::ofstream out(path);
  if (!out) {
    throw InferError("cannot open " + path.string() + " for writing");
  }
  out << std::fixed << std::setprecision(3);
  out << "device_type: " << options.device_type << '\n'
      << "device_id: " << options.device_id << '\n'
      << "precision_mode: " << (options.device_type == "Ascend" ? options.precision_mode : "n/a (CPU)") << '\n'
      << "mindir_path: " << options.mindir_path << '\n'
      << "samples: " << entries.size() << '\n'
      << "batch_size: " << batch_size << '\n'
      << "batches: " << batches.size() << '\n'
      << "padded_samples: " << batches.size() * static_cast<std::size_t>(batch_size) - entries.size() << '\n'
      << "# Predict latency per batch (ms)\n"
      << "total_ms: " << all.total_ms << '\n'
      << "mean_ms: " << all.mean_ms << '\n'
      << "min_ms: " << all.min_ms << '\n'
      << "p50_ms: " << all.p50_ms << '\n'
      << "p90_ms: " << all.p90_ms << '\n'
      << "max_ms: " << all.max_ms << '\n';
  if (latencies_ms.size() > 1) {
    // The first Predict often pays one-off costs (memory pools, kernel selection); report the rest apart.
    const LatencyStats warm = SummarizeLatencies(std::vector<double>(latencies_ms.begin() + 1, latencies_ms.end()));
    out << "mean_ms_without_first: " << warm.mean_ms << '\n';
  }
  out << "throughput_samples_per_s: " << samples_per_s << '\n'
      << "# per batch, the Predict latency (ms) and the samples it ran (padding not listed)\n";
  for (const auto &run : batches) {
    out << run.latency_ms;
    for (std::size_t i = run.first; i < run.first + run.count; ++i) {
      out << ' ' << entries[i].name;
    }
    out << '\n';
  }
  if (!out) {
    throw InferError("failed to write " + path.string());
  }
}

/// Fills the batched host buffer of every model input with the samples entries[first .. first + B); slots past
/// the last sample repeat it (real data keeps padded rows numerically ordinary, e.g. no all-zero attention mask).
/// `image_cache` keeps the last file read per per-image input: consecutive samples usually share their image.
void FillBatch(std::vector<mindspore::MSTensor> *inputs, const fs::path &input_dir,
               const std::vector<SampleEntry> &entries, std::size_t first, std::size_t batch,
               std::vector<std::pair<std::string, std::vector<char>>> *image_cache) {
  const std::size_t last = entries.size() - 1;
  for (std::size_t k = 0; k < inputs->size(); ++k) {
    mindspore::MSTensor &tensor = (*inputs)[k];
    char *buffer = static_cast<char *>(tensor.MutableData());
    if (buffer == nullptr) {
      throw InferError("cannot get a host buffer for model input " + DescribeTensor(tensor));
    }
    const std::size_t slot_bytes = tensor.DataSize() / batch;
    for (std::size_t slot = 0; slot < batch; ++slot) {
      const SampleEntry &entry = entries[std::min(first + slot, last)];
      char *dst = buffer + slot * slot_bytes;
      const fs::path path = InputFile(input_dir, k, entry);
      if (!kInputSpecs[k].per_image) {
        ReadBinaryInto(path, dst, slot_bytes);
        continue;
      }
      auto &[cached_name, cached_bytes] = (*image_cache)[k];
      if (cached_name != entry.image || cached_bytes.size() != slot_bytes) {
        cached_bytes.resize(slot_bytes);
        ReadBinaryInto(path, cached_bytes.data(), slot_bytes);
        cached_name = entry.image;
      }
      std::memcpy(dst, cached_bytes.data(), slot_bytes);
    }
  }
}

int Run(const Options &options) {
  const fs::path mindir_path(options.mindir_path);
  const fs::path input_dir(options.input_dir);
  const fs::path output_dir(options.output_dir);

  std::error_code ec;
  if (!fs::is_regular_file(mindir_path, ec)) {
    throw InferError("MINDIR file does not exist: " + mindir_path.string());
  }
  const fs::path index_path = input_dir / kIndexFileName;
  const std::vector<SampleEntry> entries = ReadSampleIndex(index_path);
  std::vector<std::string> sample_subdirs;
  std::string image_subdir;
  for (const auto &spec : kInputSpecs) {
    if (spec.per_image) {
      image_subdir = spec.subdir;
    } else {
      sample_subdirs.emplace_back(spec.subdir);
    }
  }
  CheckSampleFiles(input_dir, index_path, entries, sample_subdirs, image_subdir);
  fs::create_directories(output_dir, ec);
  if (ec) {
    throw InferError("cannot create output folder " + output_dir.string() + ": " + ec.message());
  }

  mindspore::Model model;
  ThrowIfError(model.Build(mindir_path.string(), mindspore::kMindIR, MakeContext(options)),
               "failed to build " + mindir_path.string() + " for device " + options.device_type);

  std::vector<mindspore::MSTensor> inputs = model.GetInputs();
  ValidateInputTypes(inputs);
  const std::vector<mindspore::MSTensor> declared_outputs = model.GetOutputs();
  for (std::size_t k = 0; k < declared_outputs.size(); ++k) {  // fail before the first Predict when possible
    CheckOutputType(declared_outputs[k], k, "the model");
  }
  const int64_t batch_size = BatchSize(inputs);
  const auto batch = static_cast<std::size_t>(batch_size);
  ValidateInputSizes(inputs, input_dir, entries, batch_size);
  const std::size_t num_batches = (entries.size() + batch - 1) / batch;
  std::cout << "Model " << mindir_path.string() << " on " << options.device_type << " " << options.device_id
            << ", " << entries.size() << " samples in " << num_batches << " batches of " << batch_size << '\n';
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    std::cout << "  input " << k << ": " << DescribeTensor(inputs[k]) << " <- " << kInputSpecs[k].subdir << "/\n";
  }

  std::vector<std::pair<std::string, std::vector<char>>> image_cache(inputs.size());
  std::vector<BatchRun> batches;
  batches.reserve(num_batches);
  for (std::size_t b = 0; b < num_batches; ++b) {
    BatchRun run;
    run.first = b * batch;
    run.count = std::min(batch, entries.size() - run.first);
    const std::string what = run.count == 1 ? "sample " + entries[run.first].name
                                            : "the batch of samples " + entries[run.first].name + " .. " +
                                                  entries[run.first + run.count - 1].name;
    FillBatch(&inputs, input_dir, entries, run.first, batch, &image_cache);

    std::vector<mindspore::MSTensor> outputs;
    const auto start = std::chrono::steady_clock::now();
    const mindspore::Status status = model.Predict(inputs, &outputs);
    const auto stop = std::chrono::steady_clock::now();
    ThrowIfError(status, "Predict failed for " + what);
    run.latency_ms = std::chrono::duration<double, std::milli>(stop - start).count();
    if (outputs.empty()) {
      throw InferError("Predict returned no outputs for " + what);
    }
    if (b == 0) {
      for (std::size_t k = 0; k < outputs.size(); ++k) {
        std::cout << "  output " << k << ": " << DescribeTensor(outputs[k])
                  << (outputs[k].DataType() == mindspore::DataType::kNumberTypeFloat16
                          ? " -> converted to float32"
                          : "")
                  << '\n';
      }
    }

    std::vector<Float32Output> converted;  // every output checked before any file of this batch is written
    converted.reserve(outputs.size());
    for (std::size_t k = 0; k < outputs.size(); ++k) {
      converted.emplace_back(outputs[k], k, what);
    }
    for (std::size_t k = 0; k < outputs.size(); ++k) {
      const std::size_t slice_bytes = SampleSliceBytes(outputs[k], k, batch_size) * converted[k].growth();
      const char *bytes = converted[k].bytes();
      for (std::size_t slot = 0; slot < run.count; ++slot) {  // padded slots are dropped here
        const std::string &name = entries[run.first + slot].name;
        WriteBinary(output_dir / (name + "_" + std::to_string(k) + ".bin"), bytes + slot * slice_bytes, slice_bytes);
      }
    }
    batches.push_back(run);
  }

  WriteLatencyReport(output_dir / kLatencyFileName, options, batch_size, entries, batches);
  std::vector<double> latencies_ms;
  for (const auto &run : batches) {
    latencies_ms.push_back(run.latency_ms);
  }
  const LatencyStats stats = SummarizeLatencies(latencies_ms);
  const double samples_per_s =
      stats.total_ms > 0.0 ? 1000.0 * static_cast<double>(entries.size()) / stats.total_ms : 0.0;
  std::cout << std::fixed << std::setprecision(3) << "Mean latency: " << stats.mean_ms << " ms per batch of "
            << batch_size << " over " << stats.count << " batches (" << entries.size()
            << " samples); throughput: " << samples_per_s << " samples/s\n"
            << "Wrote outputs and " << kLatencyFileName << " to " << output_dir.string() << '\n';
  return 0;
}

}  // namespace
}  // namespace coupalign

int main(int argc, char **argv) {
  const std::string program = argc > 0 ? std::filesystem::path(argv[0]).filename().string() : "main";
  try {
    const coupalign::Options options = coupalign::ParseArgs(argc, argv);
    if (options.show_help) {
      std::cout << coupalign::UsageText(program);
      return 0;
    }
    return coupalign::Run(options);
  } catch (const coupalign::UsageError &error) {
    std::cerr << "error: " << error.what() << "\nRun '" << program << " --help' for usage.\n";
    return 2;
  } catch (const std::exception &error) {
    std::cerr << "error: " << error.what() << '\n';
    return 1;
  }
}
