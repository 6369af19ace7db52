"""lowbit-asr: 2-bit Conformer RNN-T quantization-aware training, judged by model size vs WER."""

__version__ = "0.1.0"
