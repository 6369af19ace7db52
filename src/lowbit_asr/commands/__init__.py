"""Command-line entry points, each short and linear (see ``lowbit_asr.cli``)."""
