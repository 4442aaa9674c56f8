"""Shared pytest set-up: import path, CPU context, and the oneDNN ISA choice made before MindSpore loads."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Must precede the first `import mindspore`; see src/utils/runtime.py for why.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)
