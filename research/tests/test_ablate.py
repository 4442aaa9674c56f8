"""research/tools/ablate.py's bookkeeping: subset metrics read back from eval.py's CSV, and every row a valid
configuration. (The same-category subset itself, `same_category_indices`, is tested in tests/test_decomposition.py.)"""
import os

import numpy as np

from research.tools import ablate
from src.data.refer import ReferDataset
from src.data.synthetic import generate_synthetic_refer
from src.engine.decomposition import same_category_indices
from src.engine.evaluator import EvalResult, SampleResult, write_reports
from src.metrics import RefSegMetrics


def test_subset_metrics_of_the_same_category_subset(tmp_path):
    root = str(tmp_path / "data")
    generate_synthetic_refer(root, num_images=24, seed=5)
    refer = ReferDataset(root, "refcoco", "unc", "train")
    keys = same_category_indices(refer)
    assert 0 < len(keys) < len(refer.samples())  # both kinds occur, so the subset is a real subset

    rng = np.random.default_rng(0)
    samples, subset = [], RefSegMetrics()
    for s in refer.samples():
        union = int(rng.integers(1, 500))
        inter = int(rng.integers(0, union + 1))
        samples.append(SampleResult(s.index, s.ref_id, s.sent_id, s.text, inter / union, inter / union, inter, union))
        if (s.ref_id, s.sent_id) in keys:
            subset.add(inter, union)
    out = str(tmp_path / "eval")
    write_reports(EvalResult({}, {}, samples), out, {})
    got = ablate.subset_metrics(os.path.join(out, "per_sample.csv"), keys)
    want = subset.compute()
    assert got["num_samples"] == want["num_samples"] == len(keys)
    for name in ("overall_iou", "mean_iou", "precision@0.5", "precision@0.9"):
        assert abs(got[name] - want[name]) < 1e-9, name


def test_every_row_is_a_valid_configuration_of_a_config_with_a_category_head():
    """Every row builds a criterion that fits its model (a term needing a part the row removed is refused when the
    criterion is built); rows without the class term drop the category head; the other rows keep the config's
    choices and terms."""
    from src.config import config_from_dict, load_config
    from src.models.criterion import CoupAlignCriterion

    cfg = load_config(os.path.join(ablate.REPO, "configs", "quickstart_cpu.yaml"),
                      ["--model.mask_generator.num_classes=6", "--model.sma.mask_geometry=true"])
    for row in ablate.ROWS:
        overrides = ablate._row_overrides(row, cfg)
        built = config_from_dict(cfg.to_dict(), overrides)  # raises ConfigError on an invalid row
        terms = CoupAlignCriterion.from_config(built).term_names  # raises ConfigError on a term without its part
        heads = built.model.mask_generator.num_classes
        # the quickstart validates once without diagnostics; every research run per epoch with them
        assert (built.train.validate_every, built.train.diagnostics_pairs) == (1, 32), row
        if row in ("lavt", "bidir", "sma_sum", "paper_sma"):
            assert heads == 0, row
        else:
            assert heads == 6, row
        if row in ("lavt", "bidir", "sma_sum"):
            assert terms == ("referring",), row
        elif row == "sma":
            assert "aux_contrast" not in terms and "proposal_masks" in terms, row
        elif row in ("coupalign", "n4", "n16", "n64"):
            assert list(terms) == cfg.loss.terms, row
