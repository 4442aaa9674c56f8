"""The loss terms, one file each, registered in LOSS_TERMS (src/models/registry.py) under the name `loss.terms`
uses. The criterion (src/models/criterion.py) sums the terms the config names, each times its weight in
`loss.weights`; adding a term is one file here and its name in the config (docs/developer.md, "Extending").

    referring           referring.py           CE + Dice of the output logits at every supervised stage
    aux_contrast        aux_contrast.py        the auxiliary foreground/background pixel contrast
    proposal_masks      proposal_masks.py      CE + Dice of each proposal toward the object matched to it
    proposal_selection  proposal_selection.py  cross-entropy of SMA's scores toward the referent's proposal
    proposal_class      proposal_class.py      the proposals' categories (Mask2Former's class loss)
    sma_map             sma_map.py             CE + Dice of SMA's own map (the coupled head)

base.py holds the interface, functional.py the shared arithmetic, matching.py the one-to-one matching that the
proposal terms share (computed once per step).
"""
