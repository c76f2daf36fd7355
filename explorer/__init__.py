"""The face explorer behind app.py: inputs (bounds), core (the Explorer, no web), page (Gradio), memory (glibc)."""
