"""The chat side of dreamer: runtimes that stream replies, the chat session, and the Textual UI.

`agent` never imports torch: chat runs on llama.cpp (or a fake in tests).
"""
