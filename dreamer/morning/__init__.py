"""The morning: the expert exported for llama.cpp, the adapter stack on disk and its manifest,
and the transformers chat runtime that loads the same stack."""
