"""Training-health diagnostics of a checkpoint: is every alignment of CoupAlign doing its job?

    python tools/diagnose.py [--config_path C] --checkpoint_path CK [--data_root D] [--split val]
        [--pairs 32] [--output diagnostics.json]

--config_path is optional with a checkpoint written by train.py: its config, text-encoder architecture and
vocabulary are stored in it (src/engine/inference.py, the path eval.py and infer.py take).

Prints every diagnostic of src/engine/diagnostics.py (SMA weight entropy, proposal similarity, whether
the chosen proposal follows the sentence, text-encoder token similarity per layer, WPA language-term
spread per stage, auxiliary loss against chance) and one WARNING line per collapsed part. Forward
passes only. Exit code 0 either way; the JSON (--output) holds the values and the warnings.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported


def main(argv=None) -> int:
    from src.config import ConfigError
    from src.utils.cli import split_options
    from src.data.base import build_dataset
    from src.engine import diagnostics
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.models.criterion import CoupAlignCriterion
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"pairs": "32", "output": "", "split": "val"}
    rest = split_options(args, options)  # the tool's own options; the rest are config keys
    cfg = load_inference_config(rest)
    if not cfg.checkpoint_path:
        raise ConfigError("tools/diagnose.py needs --checkpoint_path=<a train.py checkpoint>")
    setup_context(cfg)
    refer = build_dataset(cfg, options["split"])
    tokenizer = build_trained_tokenizer(cfg, "tools/diagnose.py")
    probe = diagnostics.ProbeSet.from_refer(refer, tokenizer, cfg.model.image_size, int(options["pairs"]))
    model = build_trained_model(cfg, "tools/diagnose.py")
    metrics = diagnostics.collect(model, probe, CoupAlignCriterion.from_config(cfg))
    print(f"diagnostics of {cfg.checkpoint_path} on {len(probe) // 2} same-image pairs of {refer!r}")
    print(diagnostics.format_report(metrics))
    if options["output"]:
        with open(options["output"], "w", encoding="utf-8") as f:
            json.dump({"checkpoint": cfg.checkpoint_path, "metrics": metrics,
                       "warnings": diagnostics.warnings_for(metrics)}, f, indent=2)
        print(f"wrote {options['output']}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
