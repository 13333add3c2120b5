"""Sleep, stage 2: Dreaming (the paper's second stage), after stage 1 has trained tonight's expert.

    write  -> score (filter, then reward on throwaway copies) -> writer (ReST-EM) -> rehearse

dreamer.sleep.dreaming.stage runs the four steps; each has its module.
"""
