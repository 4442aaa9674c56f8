/**
 * CoupAlign referring-segmentation inference on the MindSpore Lite C++ runtime.
 *
 * Loads an exported MINDIR (static batch) on Ascend 310, GPU or CPU, feeds it the raw tensors that the
 * Python preprocessing wrote (image float32 Bx3xHxW, input ids int32 BxT, attention mask int32 BxT, one .bin
 * per sample and input), writes every output tensor back as raw bytes and reports per-sample latency.
 * Image decoding and resizing deliberately stay in Python so this program needs nothing but the Lite API.
 */
#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"
#include "utils.h"

namespace coupalign {
namespace {

namespace fs = std::filesystem;

/// One model input: the sub-folder of --input_dir holding its .bin files and the element type it must have.
struct InputSpec {
  const char *subdir;
  mindspore::DataType dtype;
};

/// Model inputs in the positional order of the exported network's construct(image, input_ids, attention_mask).
constexpr std::array<InputSpec, 3> kInputSpecs = {{
    {"00_image", mindspore::DataType::kNumberTypeFloat32},
    {"01_input_ids", mindspore::DataType::kNumberTypeInt32},
    {"02_attention_mask", mindspore::DataType::kNumberTypeInt32},
}};

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

/// Context holding exactly one device description, selected by --device_type.
std::shared_ptr<mindspore::Context> MakeContext(const Options &options) {
  auto context = std::make_shared<mindspore::Context>();
  if (options.cpu_threads > 0) {
    context->SetThreadNum(options.cpu_threads);
  }
  auto &devices = context->MutableDeviceInfo();
  if (options.device_type == "Ascend") {
    auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
    ascend->SetDeviceID(options.device_id);
    devices.push_back(ascend);
  } else if (options.device_type == "GPU") {
    auto gpu = std::make_shared<mindspore::GPUDeviceInfo>();
    gpu->SetDeviceID(options.device_id);
    devices.push_back(gpu);
  } else {
    devices.push_back(std::make_shared<mindspore::CPUDeviceInfo>());
  }
  return context;
}

/// Checks input count and element types, then that every sample file has exactly the byte size of its input,
/// before anything runs, so a bad dataset fails fast with the offending file named.
void ValidateInputs(const std::vector<mindspore::MSTensor> &model_inputs, const fs::path &input_dir,
                    const std::vector<std::string> &sample_names) {
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
  for (const auto &name : sample_names) {
    for (std::size_t k = 0; k < kInputSpecs.size(); ++k) {
      const fs::path path = input_dir / kInputSpecs[k].subdir / name;
      std::error_code ec;
      const auto actual = fs::file_size(path, ec);
      if (ec) {
        throw InferError("cannot stat " + path.string() + ": " + ec.message());
      }
      const auto expected = model_inputs[k].DataSize();
      if (actual != expected) {
        throw InferError("size mismatch for " + path.string() + ": expected " + std::to_string(expected) +
                         " bytes, got " + std::to_string(actual) + " bytes (model input " + std::to_string(k) +
                         " " + DescribeTensor(model_inputs[k]) + ")");
      }
    }
  }
}

void WriteLatencyReport(const fs::path &path, const Options &options, int64_t batch_size,
                        const std::vector<std::string> &sample_names, const std::vector<double> &latencies_ms) {
  const LatencyStats all = SummarizeLatencies(latencies_ms);
  const double seconds = all.total_ms / 1000.0;
  const double samples_per_s = seconds > 0.0 ? static_cast<double>(all.count) / seconds : 0.0;

  std::ofstream out(path);
  if (!out) {
    throw InferError("cannot open " + path.string() + " for writing");
  }
  out << std::fixed << std::setprecision(3);
  out << "device_type: " << options.device_type << '\n'
      << "device_id: " << options.device_id << '\n'
      << "mindir_path: " << options.mindir_path << '\n'
      << "samples: " << all.count << '\n'
      << "batch_size: " << batch_size << '\n'
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
      << "throughput_images_per_s: " << samples_per_s * static_cast<double>(batch_size) << '\n'
      << "# per-sample Predict latency (ms)\n";
  for (std::size_t i = 0; i < latencies_ms.size(); ++i) {
    out << sample_names[i] << ' ' << latencies_ms[i] << '\n';
  }
  if (!out) {
    throw InferError("failed to write " + path.string());
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
  std::vector<std::string> subdirs;
  for (const auto &spec : kInputSpecs) {
    subdirs.emplace_back(spec.subdir);
  }
  const std::vector<std::string> sample_names = MatchSampleNames(input_dir, subdirs);
  fs::create_directories(output_dir, ec);
  if (ec) {
    throw InferError("cannot create output folder " + output_dir.string() + ": " + ec.message());
  }

  mindspore::Model model;
  ThrowIfError(model.Build(mindir_path.string(), mindspore::kMindIR, MakeContext(options)),
               "failed to build " + mindir_path.string() + " for device " + options.device_type);

  std::vector<mindspore::MSTensor> inputs = model.GetInputs();
  ValidateInputs(inputs, input_dir, sample_names);
  const int64_t batch_size = inputs.front().Shape().empty() ? 1 : inputs.front().Shape().front();
  std::cout << "Model " << mindir_path.string() << " on " << options.device_type << " " << options.device_id
            << ", " << sample_names.size() << " samples\n";
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    std::cout << "  input " << k << ": " << DescribeTensor(inputs[k]) << " <- " << kInputSpecs[k].subdir << "/\n";
  }

  std::vector<double> latencies_ms;
  latencies_ms.reserve(sample_names.size());
  for (std::size_t i = 0; i < sample_names.size(); ++i) {
    const std::string &name = sample_names[i];
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      void *buffer = inputs[k].MutableData();
      if (buffer == nullptr) {
        throw InferError("cannot get a host buffer for model input " + DescribeTensor(inputs[k]));
      }
      ReadBinaryInto(input_dir / kInputSpecs[k].subdir / name, buffer, inputs[k].DataSize());
    }

    std::vector<mindspore::MSTensor> outputs;
    const auto start = std::chrono::steady_clock::now();
    const mindspore::Status status = model.Predict(inputs, &outputs);
    const auto stop = std::chrono::steady_clock::now();
    ThrowIfError(status, "Predict failed for sample " + name);
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    if (outputs.empty()) {
      throw InferError("Predict returned no outputs for sample " + name);
    }
    if (i == 0) {
      for (std::size_t k = 0; k < outputs.size(); ++k) {
        std::cout << "  output " << k << ": " << DescribeTensor(outputs[k]) << '\n';
      }
    }

    const std::string stem = StripBinSuffix(name);
    for (std::size_t k = 0; k < outputs.size(); ++k) {
      const std::shared_ptr<const void> data = outputs[k].Data();
      if (data == nullptr) {
        throw InferError("output " + std::to_string(k) + " of sample " + name + " has no data");
      }
      WriteBinary(output_dir / (stem + "_" + std::to_string(k) + ".bin"), data.get(), outputs[k].DataSize());
    }
  }

  WriteLatencyReport(output_dir / kLatencyFileName, options, batch_size, sample_names, latencies_ms);
  const LatencyStats stats = SummarizeLatencies(latencies_ms);
  const double samples_per_s = stats.total_ms > 0.0 ? 1000.0 * static_cast<double>(stats.count) / stats.total_ms : 0.0;
  std::cout << std::fixed << std::setprecision(3) << "Mean latency: " << stats.mean_ms << " ms over " << stats.count
            << " samples (batch " << batch_size << "); throughput: " << samples_per_s << " samples/s, "
            << samples_per_s * static_cast<double>(batch_size) << " images/s\n"
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
