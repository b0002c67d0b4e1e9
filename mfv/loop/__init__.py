"""The MFV loop's parts under :mod:`mfv.visualize`: a facet (:mod:`.facet`), its checkpoints
(:mod:`.checkpoint`), a step on the host (:mod:`.host`) and an octave on the device (:mod:`.device`).
"""
