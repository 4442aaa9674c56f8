"""The configs of research/configs/ load and validate (tests/test_config.py covers configs/)."""
import glob
import os

import pytest

from src.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "research", "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_research_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.image_size > 0
