"""LibriSpeech-layout reader, the generated (embedded) corpus, features, tokenizer, DataModule."""
