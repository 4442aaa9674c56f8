"""Export a trained CoupAlign for deployment (MindSpore Lite / Ascend 310).

    python export.py --config_path C --checkpoint_path CK --file_name NAME --file_format MINDIR [--batch_size 1]
        [--export_device CPU|GPU|Ascend]

--config_path is optional with a checkpoint written by train.py (its config is stored in it).
Inputs of the exported graph, in this order: image float32 (B, 3, S, S) (S = model.image_size,
ImageNet-normalised RGB), input_ids int32 (B, T), attention_mask int32 (B, T) (T = model.max_tokens).
Output: logits float32 (B, 1, S, S); mask = logits > 0. The batch is static (a dynamic-batch graph
with interpolation loads but does not run in MindSpore 2.10). AIR needs an Ascend device.

The export runs on CPU whatever the config's device_target (the one training used, often Ascend): a MINDIR
holds the graph and weights, not device code, so it is the same file from any device, and a 310 inference
host often has no MindSpore that can drive its card. --export_device picks another device (AIR needs Ascend).
"""
import sys

EXPORT_DEVICES = ("CPU", "GPU", "Ascend")


def split_export_device(argv):
    """(--export_device's value or None, the other arguments) from the command line."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--export_device", choices=EXPORT_DEVICES, default=None)
    known, rest = parser.parse_known_args(list(argv))
    return known.export_device, rest


from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

# Before MindSpore is imported, for the device the export runs on (not the config's device_target).
apply_cpu_env_defaults(["--device_target", split_export_device(sys.argv[1:])[0] or "CPU"])


def export_model(model, file_name: str, file_format: str, batch_size: int, image_size: int, max_tokens: int) -> str:
    import numpy as np
    import mindspore as ms

    from src.errors import ConfigError

    inputs = (ms.Tensor(np.zeros((batch_size, 3, image_size, image_size), np.float32)),
              ms.Tensor(np.zeros((batch_size, max_tokens), np.int32)),
              ms.Tensor(np.ones((batch_size, max_tokens), np.int32)))
    try:
        ms.export(model, *inputs, file_name=file_name, file_format=file_format)
    except RuntimeError as e:
        if file_format != "ONNX":
            raise
        # Measured with MindSpore 2.10: the ONNX exporter has no converter for Erf (the exact GELU of
        # Swin, BERT and WPA), the first operator it meets. MINDIR carries the whole graph.
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"--file_format ONNX: ONNX export is not possible with this MindSpore: {reason} "
                          "Use --file_format MINDIR.") from None
    suffix = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}[file_format]
    return file_name if file_name.endswith(suffix) else file_name + suffix


def main(argv=None) -> int:
    import dataclasses
    import os

    from src.config import ConfigError
    from src.engine.inference import build_trained_model, load_inference_config
    from src.utils.runtime import setup_context

    device, rest = split_export_device(sys.argv[1:] if argv is None else argv)
    cfg = load_inference_config(rest, aliases={"batch_size": "export.batch_size", "file_name": "export.file_name",
                                               "file_format": "export.file_format"})
    if cfg.export.file_format == "AIR" and device != "Ascend":
        raise ConfigError("--file_format AIR is compiled for the Ascend device: it needs --export_device Ascend "
                          "on an Ascend machine; use --file_format MINDIR elsewhere (Lite loads it on the 310)")
    if device is None:
        device = "CPU"
        if cfg.device_target != device:
            print(f"export.py: exporting on CPU (the config's device_target={cfg.device_target} is where it trained; "
                  "the MINDIR does not depend on it; --export_device overrides)")
    # One process, no launcher: the config's distribute flag (true in a checkpoint of an msrun job) must not
    # make setup_context call init().
    cfg = dataclasses.replace(cfg, device_target=device, distribute=False,
                              device_id=cfg.device_id if device == cfg.device_target else None)
    setup_context(cfg)
    model = build_trained_model(cfg, "export.py")
    out_dir = os.path.dirname(os.path.abspath(cfg.export.file_name))
    os.makedirs(out_dir, exist_ok=True)
    path = export_model(model, cfg.export.file_name, cfg.export.file_format, cfg.export.batch_size,
                        cfg.model.image_size, cfg.model.max_tokens)
    print(f"exported {path}: inputs image float32 ({cfg.export.batch_size}, 3, {cfg.model.image_size}, "
          f"{cfg.model.image_size}), input_ids int32 ({cfg.export.batch_size}, {cfg.model.max_tokens}), "
          f"attention_mask int32 ({cfg.export.batch_size}, {cfg.model.max_tokens}); output logits float32 "
          f"({cfg.export.batch_size}, 1, {cfg.model.image_size}, {cfg.model.image_size})")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
