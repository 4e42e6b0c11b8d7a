"""The editor app: editing state with undo/redo (``editing``), per-browser workspace (``state``), exports (``export``).

Plain Python objects with unit tests; the Gradio UI only wires events to them.
"""
