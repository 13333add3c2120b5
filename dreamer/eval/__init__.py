"""Closed-book evaluation of the memory: probes, multiple choice, generation, drift and
perplexity. Used by `dreamer eval`, the gate and the benchmarks."""
