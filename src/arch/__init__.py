"""Architecture descriptions without MindSpore: BERT's hyper-parameters (`bert.BertConfig`) and Swin's presets
(`swin.swin_arch`). The lowest layer of the package: the config schema (src/config/), the models, and the
analytic cost model (tools/benchmark.py) all derive from them, so none of those imports another to get them."""
